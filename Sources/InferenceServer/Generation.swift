import Foundation
import Hummingbird
import Inference
import Tokenizer

/// One completions or chat request turned into engine sequences: its prompts (token ids), the
/// choices to generate for each, and how to report them.
struct GenerationPlan: Sendable {
    enum Style: Sendable {
        case completion
        case chat
    }

    var style: Style
    var model: String
    var prompts: [[Int]]
    /// Prompt texts, for `echo`.
    var promptTexts: [String]
    var n: Int
    var requests: [SequenceRequest]  // choice i is prompt i / n
    var stop: [String]
    var skipSpecialTokens: Bool
    var userStopTokens: Set<Int>
    var stream: Bool
    var includeUsage: Bool
    /// Completions: alternatives per token (`logprobs: k`). Chat: `top_logprobs` when `logprobs` is true.
    var logprobs: Int?
    var echo: Bool
    /// vLLM's `prompt_logprobs`: report them in each choice.
    var reportPromptLogprobs = false
    /// `include_stop_str_in_output`: a matched stop string stays at the end of the text.
    var includeStopString = false
    /// `return_tokens_as_token_ids`: logprobs name tokens as "token_id:N".
    var tokensAsIDs = false
    /// `stream_options.continuous_usage_stats`: every chunk carries the usage so far.
    var continuousUsage = false
    /// Chat `echo` when the last message is the assistant's: the answer's content starts with it.
    var echoPrefix: String?
    let id: String
    let created = Int(Date().timeIntervalSince1970)

    init(style: Style, model: String) {
        self.style = style
        self.model = model
        prompts = []
        promptTexts = []
        n = 1
        requests = []
        stop = []
        skipSpecialTokens = true
        userStopTokens = []
        stream = false
        includeUsage = false
        echo = false
        id = (style == .chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
    }
}

/// Runs a plan on the scheduler and writes the answer: one JSON object, or server-sent events.
struct GenerationResponder {
    let served: ServedModel
    let plan: GenerationPlan
    /// The client's connection: when it closes, the sequences are cancelled.
    let connection: ConnectionWatch

    /// Submits every choice at once (the scheduler takes all or none); a refusal is the answer.
    func submit() throws -> [ChoiceState] {
        let handles: [SequenceHandle]
        do {
            handles = try served.scheduler.submit(plan.requests)
        } catch {
            switch error {
            case .queueFull(let waiting):
                throw OpenAIError(
                    .tooManyRequests, "the server is at capacity (\(waiting) requests waiting); retry later", retryAfter: 1)
            case .shuttingDown:
                throw OpenAIError(.serviceUnavailable, "the server is shutting down", retryAfter: 5)
            case .tooManySequences(let requested, let limit):
                throw OpenAIError.badRequest(
                    "this request asks for \(requested) sequences (prompts × n) but the server holds at most \(limit) "
                        + "at once (--max-num-seqs plus --max-waiting); send fewer", param: "n")
            case .exceedsMemory(let needed, let limit):
                throw OpenAIError.badRequest(
                    "this request needs \(needed >> 20) MiB of KV cache, more than the server's \(limit >> 20) MiB; "
                        + "lower max_tokens or the prompt length", param: "max_tokens")
            }
        }
        return zip(plan.requests, handles).enumerated().map { index, pair in
            ChoiceState(
                index: index, promptIndex: index / plan.n, handle: pair.1, tokenizer: served.tokenizer, stop: plan.stop,
                skipSpecialTokens: plan.skipSpecialTokens, userStopTokens: plan.userStopTokens,
                stopTokens: pair.0.parameters.stopTokenIDs, includeStopString: plan.includeStopString,
                minTokens: pair.0.parameters.sampling.minTokens)
        }
    }

    /// Non-streaming answers wait for every choice: run this in a task that is cancelled when the
    /// client goes away, which cancels the sequences.
    func respond() async throws -> Response {
        var choices = try submit()
        if plan.stream {
            let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
            let responder = self
            return Response(
                status: .ok, headers: headers,
                body: ResponseBody { [choices] writer in
                    var choices = choices
                    try await responder.stream(&choices, into: &writer)
                })
        }
        return try await collect(&choices)
    }

    private func collect(_ choices: inout [ChoiceState]) async throws -> Response {
        let watcher = watchConnection(choices.map(\.handle))
        defer { watcher.cancel() }
        for await (index, event) in mergedEvents(choices.map(\.handle)) {
            if let event { _ = choices[index].apply(event) } else { choices[index].closed() }
            if choices.allSatisfy(\.isDone) { break }
        }
        try Task.checkCancellation()
        if choices.contains(where: { $0.failure != nil }) && !connection.isOpen {
            // Stopped because the client left: close rather than answer.
            connection.closeDeparted()
            throw CancellationError()
        }
        if let failed = choices.first(where: { $0.failure != nil }) {
            throw OpenAIError(.serviceUnavailable, "generation failed: \(failed.failure!)", retryAfter: 1)
        }
        var fields: [(String, JSON)] = [
            ("id", .string(plan.id)),
            ("object", .string(plan.style == .chat ? "chat.completion" : "text_completion")),
            ("created", .int(plan.created)),
            ("model", .string(plan.model)),
            ("choices", .array(choices.map(finalChoice))),
            ("usage", usage(choices)),
        ]
        if plan.reportPromptLogprobs && plan.style == .chat, let first = choices.first {
            fields.append(("prompt_logprobs", promptLogprobs(first)))
        }
        let body: JSON = .object(fields)
        return Response(
            status: .ok, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: body.serialized())))
    }

    /// Polls the connection while the sequences run and cancels them when the client is gone: a
    /// non-streaming request writes nothing until the end, so a write error cannot tell.
    private func watchConnection(_ handles: [SequenceHandle]) -> Task<Void, Never> {
        let connection = self.connection
        return Task {
            defer { connection.stop() }
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                if !connection.isOpen {
                    for handle in handles { handle.cancel() }
                    return
                }
            }
        }
    }

    // MARK: Streaming

    private func stream(_ choices: inout [ChoiceState], into writer: inout any ResponseBodyWriter) async throws {
        let watcher = watchConnection(choices.map(\.handle))
        defer { watcher.cancel() }
        func send(_ json: JSON) async throws {
            try await writer.write(ByteBuffer(string: "data: " + json.serialized() + "\n\n"))
        }
        // A chunk of choice `index`, with that choice's usage so far when the client asked for it in
        // every chunk (vLLM: its prompt's tokens and its own completion tokens).
        func chunk(_ index: Int, _ parts: [JSON]) -> JSON {
            self.chunk(parts, usage: plan.continuousUsage ? usage(of: choices[index]) : nil)
        }
        // Text so far per choice, for completion logprobs' text_offset.
        var offsets = Array(repeating: 0, count: choices.count)
        for choice in choices {
            if plan.style == .chat {
                try await send(chunk(choice.index, [choiceChunk(choice.index, delta: .object([("role", "assistant"), ("content", "")]))]))
                if let prefix = plan.echoPrefix, !prefix.isEmpty {
                    try await send(chunk(choice.index, [choiceChunk(choice.index, delta: .object([("content", .string(prefix))]))]))
                }
            } else if plan.echo && plan.logprobs == nil {
                let prompt = plan.promptTexts[choice.promptIndex]
                offsets[choice.index] = prompt.unicodeScalars.count
                try await send(chunk(choice.index, [choiceChunk(choice.index, text: prompt)]))
            }
        }
        // Echo with logprobs: the prompt's chunk waits for its logprobs, the sequence's first event.
        let echoesScores = plan.style == .completion && plan.echo && plan.logprobs != nil
        for await (index, event) in mergedEvents(choices.map(\.handle)) {
            guard let event else {
                let wasDone = choices[index].isDone
                choices[index].closed()
                if !wasDone && !connection.isOpen {
                    // Stopped because the client left: close rather than send an error event.
                    connection.closeDeparted()
                    throw CancellationError()
                }
                if !wasDone, let failure = choices[index].failure { try await sendError(failure, &writer) }
                if choices.allSatisfy(\.isDone) { break } else { continue }
            }
            if case .promptLogprobs = event {
                _ = choices[index].apply(event)
                if echoesScores {
                    let choice = choices[index]
                    let prompt = plan.prompts[choice.promptIndex]
                    let reported = choice.promptLogprobs ?? []
                    let entries = prompt.enumerated().map { i, id in (id: id, token: i < reported.count ? reported[i] : nil) }
                    let lp = completionLogprobs(entries, textOffset: &offsets[index])
                    try await send(chunk(index, [choiceChunk(index, text: plan.promptTexts[choice.promptIndex], logprobs: lp)]))
                }
                continue
            }
            let update = choices[index].apply(event)
            let choice = choices[index]
            if let failure = choice.failure {
                try await sendError(failure, &writer)
            } else {
                let logprobs = plan.logprobs != nil && !update.tokens.isEmpty
                if !update.text.isEmpty || logprobs {
                    let lp = logprobs ? logprobsJSON(update.tokens, textOffset: &offsets[index]) : .null
                    if plan.style == .chat {
                        try await send(chunk(index, [choiceChunk(index, delta: .object([("content", .string(update.text))]), logprobs: lp)]))
                    } else {
                        try await send(chunk(index, [choiceChunk(index, text: update.text, logprobs: lp)]))
                    }
                }
                if update.finished, let finish = choice.finish {
                    try await send(
                        chunk(index, [
                            plan.style == .chat
                                ? choiceChunk(index, delta: .object([]), finish: finish, stopReason: choice.stopReason)
                                : choiceChunk(index, text: "", finish: finish, stopReason: choice.stopReason)
                        ]))
                }
            }
            if choices.allSatisfy(\.isDone) { break }
        }
        if plan.includeUsage {
            try await send(
                .object([
                    ("id", .string(plan.id)), ("object", .string(chunkObject)), ("created", .int(plan.created)),
                    ("model", .string(plan.model)), ("choices", []), ("usage", usage(choices)),
                ]))
        }
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
        try await writer.finish(nil)
    }

    private func sendError(_ message: String, _ writer: inout any ResponseBodyWriter) async throws {
        let error = OpenAIError(.serviceUnavailable, message)
        try await writer.write(ByteBuffer(string: "data: " + error.body.serialized() + "\n\n"))
    }

    private var chunkObject: String { plan.style == .chat ? "chat.completion.chunk" : "text_completion" }

    private func chunk(_ choices: [JSON], usage: JSON?) -> JSON {
        var fields: [(String, JSON)] = [
            ("id", .string(plan.id)), ("object", .string(chunkObject)), ("created", .int(plan.created)),
            ("model", .string(plan.model)), ("choices", .array(choices)),
        ]
        if plan.includeUsage { fields.append(("usage", usage ?? .null)) }
        return .object(fields)
    }

    private func choiceChunk(
        _ index: Int, text: String? = nil, delta: JSON? = nil, logprobs: JSON = .null, finish: FinishReason? = nil,
        stopReason: JSON = .null
    ) -> JSON {
        var fields: [(String, JSON)] = [("index", .int(index))]
        if let text { fields.append(("text", .string(text))) }
        if let delta { fields.append(("delta", delta)) }
        fields += [("logprobs", logprobs), ("finish_reason", JSON(finish?.rawValue)), ("stop_reason", stopReason)]
        return .object(fields)
    }

    // MARK: Final bodies

    private func finalChoice(_ choice: ChoiceState) -> JSON {
        var offset = 0
        var fields: [(String, JSON)]
        switch plan.style {
        case .chat:
            let logprobs = plan.logprobs != nil ? logprobsJSON(choice.tokens, textOffset: &offset) : .null
            fields = [
                ("index", .int(choice.index)),
                ("message", .object([("role", "assistant"), ("content", .string((plan.echoPrefix ?? "") + choice.text))])),
                ("logprobs", logprobs),
                ("finish_reason", JSON(choice.finish?.rawValue)),
                ("stop_reason", choice.stopReason),
            ]
        case .completion:
            var text = choice.text
            var logprobs: JSON = .null
            if plan.echo { text = plan.promptTexts[choice.promptIndex] + text }
            if plan.logprobs != nil {
                var entries: [(id: Int, token: GeneratedToken?)] = []
                if plan.echo {
                    let prompt = plan.prompts[choice.promptIndex]
                    let reported = choice.promptLogprobs ?? []
                    entries = prompt.enumerated().map { i, id in (id, i < reported.count ? reported[i] : nil) }
                }
                entries += choice.tokens.map { ($0.id, $0) }
                logprobs = completionLogprobs(entries, textOffset: &offset)
            }
            fields = [
                ("index", .int(choice.index)),
                ("text", .string(text)),
                ("logprobs", logprobs),
                ("finish_reason", JSON(choice.finish?.rawValue)),
                ("stop_reason", choice.stopReason),
            ]
        }
        // Completions report them per choice; chat once, at the top level (vLLM's ChatCompletionResponse).
        if plan.reportPromptLogprobs && plan.style == .completion {
            fields.append(("prompt_logprobs", promptLogprobs(choice)))
        }
        return .object(fields)
    }

    /// vLLM's shape: per prompt token, null for the first, else {token id: {logprob, rank, decoded_token}}
    /// for the token itself (its rank: how many tokens score at least as high) and the most likely
    /// alternatives.
    private func promptLogprobs(_ choice: ChoiceState) -> JSON {
        let prompt = plan.prompts[choice.promptIndex]
        let reported = choice.promptLogprobs ?? []
        return .array(
            prompt.indices.map { i in
                guard i < reported.count, let entry = reported[i] else { return .null }
                var own: [(String, JSON)] = [("logprob", JSON(entry.logprob))]
                if let rank = entry.rank { own.append(("rank", .int(rank))) }
                own.append(("decoded_token", .string(served.tokenText(entry.id))))
                var fields: [(String, JSON)] = [(String(entry.id), .object(own))]
                for (rank, alternative) in entry.top.enumerated() where alternative.id != entry.id {
                    fields.append(
                        (
                            String(alternative.id),
                            .object([
                                ("logprob", JSON(alternative.logprob)), ("rank", .int(rank + 1)),
                                ("decoded_token", .string(served.tokenText(alternative.id))),
                            ])
                        ))
                }
                return .object(fields)
            })
    }

    private func usage(of choice: ChoiceState) -> JSON {
        let prompt = plan.prompts[choice.promptIndex].count
        return .object([
            ("prompt_tokens", .int(prompt)), ("total_tokens", .int(prompt + choice.tokens.count)),
            ("completion_tokens", .int(choice.tokens.count)),
        ])
    }

    private func usage(_ choices: [ChoiceState]) -> JSON {
        let prompt = plan.prompts.reduce(0) { $0 + $1.count }
        let completion = choices.reduce(0) { $0 + $1.tokens.count }
        return .object([
            ("prompt_tokens", .int(prompt)), ("total_tokens", .int(prompt + completion)),
            ("completion_tokens", .int(completion)),
        ])
    }

    // MARK: Logprobs

    /// A token as logprobs name it: its text, or "token_id:N" (`return_tokens_as_token_ids`).
    private func logprobToken(_ id: Int) -> String {
        plan.tokensAsIDs ? "token_id:\(id)" : served.tokenText(id)
    }

    private func logprobsJSON(_ tokens: [GeneratedToken], textOffset: inout Int) -> JSON {
        switch plan.style {
        case .completion: return completionLogprobs(tokens.map { ($0.id, $0) }, textOffset: &textOffset)
        case .chat:
            func entry(_ id: Int, _ logprob: Float) -> [(String, JSON)] {
                let text = logprobToken(id)
                return [("token", .string(text)), ("logprob", JSON(logprob)), ("bytes", .array(text.utf8.map { .int(Int($0)) }))]
            }
            return .object([
                (
                    "content",
                    .array(
                        tokens.map { token in
                            .object(
                                entry(token.id, token.logprob)
                                    + [("top_logprobs", .array(token.top.map { .object(entry($0.id, $0.logprob)) }))])
                        })
                )
            ])
        }
    }

    /// The legacy completions shape: parallel lists, a dict of alternatives per token, nulls for the
    /// first prompt token. As vLLM and OpenAI's legacy API, each dict holds the token itself beside
    /// its `logprobs` alternatives (so up to logprobs + 1 entries; with `logprobs: 0`, just the token).
    private func completionLogprobs(_ entries: [(id: Int, token: GeneratedToken?)], textOffset: inout Int) -> JSON {
        var offsets: [JSON] = []
        var logprobs: [JSON] = []
        var tokens: [JSON] = []
        var tops: [JSON] = []
        for (id, entry) in entries {
            let text = served.tokenText(id)
            offsets.append(.int(textOffset))
            textOffset += text.unicodeScalars.count
            tokens.append(.string(logprobToken(id)))
            logprobs.append(entry.map { JSON($0.logprob) } ?? .null)
            tops.append(
                entry.map { e in
                    // Keyed by text: tokens with the same text (byte pieces that each decode to U+FFFD)
                    // share one key, the later value winning where it first appeared, as vLLM's dict.
                    var fields: [(String, JSON)] = []
                    for (id, logprob) in [(e.id, e.logprob)] + e.top.filter({ $0.id != e.id }).map({ ($0.id, $0.logprob) }) {
                        let key = logprobToken(id)
                        if let at = fields.firstIndex(where: { $0.0 == key }) {
                            fields[at].1 = JSON(logprob)
                        } else {
                            fields.append((key, JSON(logprob)))
                        }
                    }
                    return .object(fields)
                } ?? .null)
        }
        return .object([
            ("text_offset", .array(offsets)), ("token_logprobs", .array(logprobs)), ("tokens", .array(tokens)),
            ("top_logprobs", .array(tops)),
        ])
    }
}
