import Foundation
import Hummingbird
import Inference
import NIOCore
import Tokenizer

/// The model the routes serve, once it is loaded: `/health` is 503 until then, so Cloud Run's startup
/// probe waits for it, and generation requests get a 503 that says so.
public final class ModelState: @unchecked Sendable {
    private let lock = NSLock()
    private var served: ServedModel?
    private var draining = false

    public init() {}

    /// After SIGTERM: /health answers 503 like the generation routes, so a load balancer that
    /// still probes stops sending work.
    func beginDraining() {
        lock.lock()
        draining = true
        lock.unlock()
    }

    /// 503 unless the model is loaded and the server is not shutting down.
    func requireHealthy() throws {
        _ = try require()
        lock.lock()
        defer { lock.unlock() }
        if draining { throw OpenAIError(.serviceUnavailable, "the server is shutting down", retryAfter: 5) }
    }

    func set(_ model: ServedModel) {
        lock.lock()
        served = model
        lock.unlock()
    }

    var current: ServedModel? {
        lock.lock()
        defer { lock.unlock() }
        return served
    }

    func require() throws -> ServedModel {
        guard let served = current else {
            throw OpenAIError(.serviceUnavailable, "the model is still loading; retry shortly", retryAfter: 1)
        }
        return served
    }
}

/// Turns every error into the OpenAI error body with the right status, and counts responses.
struct OpenAIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let response: Response
        do {
            response = try await next(request, context)
        } catch let error as OpenAIError {
            response = try error.response(from: request, context: context)
        } catch let error as any HTTPResponseError where error.status == .notFound && Routes.methods[request.uri.path] != nil {
            // The path exists with other methods: 405 with Allow, as vLLM (FastAPI) answers.
            let allowed = Routes.methods[request.uri.path]!
            var refused = try OpenAIError(
                .methodNotAllowed, "\(request.method) is not allowed on \(request.uri.path); use \(allowed.joined(separator: " or "))"
            ).response(from: request, context: context)
            refused.headers[.allow] = allowed.joined(separator: ", ")
            response = refused
        } catch let error as any HTTPResponseError {
            let message: String
            switch error.status.code {
            case 404: message = "no route for \(request.method) \(request.uri.path)"
            case 405: message = "\(request.method) is not allowed on \(request.uri.path)"
            case 413: message = "the request body is too large"
            default: message = error.status.reasonPhrase
            }
            response = try OpenAIError(error.status, message).response(from: request, context: context)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            response = try OpenAIError(.internalServerError, "internal error: \(error)").response(from: request, context: context)
        }
        metrics.addHTTPResponse(status: response.status.code)
        return response
    }
}

/// The request context: Hummingbird's core storage plus the connection, so a long generation can
/// notice that its client has gone away and stop.
struct ServerContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// Starts watching the connection for the client closing it.
    func watchConnection() async -> ConnectionWatch {
        let watch = ConnectionWatch()
        // First in the pipeline, so it sees the end of input before the HTTP handlers do. The server
        // allows half-closure, so a departed client shows up as `inputClosed`, not as an inactive channel.
        try? await channel.pipeline.addHandler(watch, position: .first).get()
        watch.channel = channel
        return watch
    }
}

/// Tells whether the client's side of a connection is still open.
final class ConnectionWatch: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let lock = NSLock()
    private var closed = false
    var channel: (any Channel)?

    var isOpen: Bool {
        lock.lock()
        defer { lock.unlock() }
        return !closed && (channel?.isActive ?? true)
    }

    private func markClosed() {
        lock.lock()
        closed = true
        lock.unlock()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { markClosed() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        markClosed()
        context.fireChannelInactive()
    }

    /// Closes the connection of a client that has gone (or half-closed): its generation was stopped,
    /// and there is nothing left to tell it; an error event or a 5xx would only reach a half-closed one.
    func closeDeparted() {
        channel?.close(promise: nil)
    }

    /// Takes the watcher out of the pipeline (the connection may serve further requests).
    func stop() {
        if let channel { channel.pipeline.removeHandler(self, promise: nil) }
    }
}

/// The OpenAI API routes (vLLM's surface, gemma3-and-serving.md §4.1).
struct Routes {
    let state: ModelState
    let metrics: ServerMetrics
    let maximumBodyBytes: Int
    let version: String

    /// The methods each path answers (HEAD with every GET): a request with another method gets a 405.
    static let methods: [String: [String]] = {
        var table: [String: [String]] = [:]
        for path in ["/health", "/version", "/metrics", "/v1/models"] { table[path] = ["GET", "HEAD"] }
        table["/ping"] = ["GET", "HEAD", "POST"]
        for path in ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"] { table[path] = ["POST"] }
        return table
    }()

    func register(on router: Router<ServerContext>) {
        router.add(middleware: OpenAIErrorMiddleware(metrics: metrics))
        router.get("/health") { _, _ -> Response in
            try state.requireHealthy()
            return Response(status: .ok)
        }
        // SageMaker's probe (vLLM answers it with GET and POST).
        router.get("/ping") { _, _ -> Response in
            try state.requireHealthy()
            return Response(status: .ok)
        }
        router.post("/ping") { _, _ -> Response in
            try state.requireHealthy()
            return Response(status: .ok)
        }
        router.get("/version") { _, _ in json(.object([("version", .string(version))])) }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: metrics.render())))
        }
        router.get("/v1/models") { _, _ in
            let served = try state.require()
            let cards: [JSON] = served.names.map { name in
                .object([
                    ("id", .string(name)), ("object", "model"), ("created", .int(served.created)),
                    ("owned_by", "inference-server"), ("root", .string(served.engine.path)), ("parent", .null),
                    ("max_model_len", .int(served.contextLength)), ("permission", []),
                ])
            }
            return json(.object([("object", "list"), ("data", .array(cards))]))
        }
        router.post("/v1/completions") { request, context in
            try await generate(request, context) { data, served in
                try completionPlan(try RequestDecoding.decode(CompletionRequest.self, from: data), served)
            }
        }
        router.post("/v1/chat/completions") { request, context in
            try await generate(request, context) { data, served in
                try chatPlan(try RequestDecoding.decode(ChatCompletionRequest.self, from: data), served)
            }
        }
        router.post("/tokenize") { request, _ in
            let served = try state.require()
            let r = try RequestDecoding.decode(TokenizeRequest.self, from: try await collect(request.body))
            try served.requireName(r.model)
            let ids: [Int] = try await offload {
                if let messages = r.messages {
                    return try render(
                        messages, served, addGenerationPrompt: r.addGenerationPrompt,
                        continueFinalMessage: r.continueFinalMessage ?? false)
                } else if let prompt = r.prompt {
                    return served.tokenizer.encode(prompt, addSpecialTokens: r.addSpecialTokens ?? true)
                }
                throw OpenAIError.badRequest("give either 'prompt' or 'messages'", param: "prompt")
            }
            var fields: [(String, JSON)] = [
                ("count", .int(ids.count)), ("max_model_len", .int(served.contextLength)),
                ("tokens", .array(ids.map { .int($0) })),
            ]
            if r.returnTokenStrs == true {
                fields.append(("token_strs", .array(ids.map { .string(served.tokenizer.token(forID: $0) ?? "") })))
            }
            return json(.object(fields))
        }
        router.post("/detokenize") { request, _ in
            let served = try state.require()
            let r = try RequestDecoding.decode(DetokenizeRequest.self, from: try await collect(request.body))
            try served.requireName(r.model)
            try checkTokens(r.tokens, served, param: "tokens")
            return json(.object([("prompt", .string(served.tokenizer.decode(r.tokens)))]))
        }
    }

    /// The generation endpoints: the body turned into a plan (off the request threads: decoding and
    /// tokenizing a big prompt takes a while), then answered while the connection is watched.
    private func generate(
        _ request: Request, _ context: ServerContext,
        plan make: @escaping @Sendable (Data, ServedModel) throws -> GenerationPlan
    ) async throws -> Response {
        let served = try state.require()
        let data = try await collect(request.body)
        let plan = try await offload { try make(data, served) }
        let watch = await context.watchConnection()
        do {
            return try await GenerationResponder(served: served, plan: plan, connection: watch).respond()
        } catch {
            watch.stop()  // refused (429, 503, ...): the connection may serve further requests
            throw error
        }
    }

    /// Runs CPU-heavy request work (JSON decoding, tokenizing) on its own queue, so that the few
    /// threads of Swift's cooperative pool stay free to answer other requests (/health among them).
    private func offload<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Self.workQueue.async { continuation.resume(with: Result { try work() }) }
        }
    }

    private static let workQueue = DispatchQueue(label: "inference-server.requests", attributes: .concurrent)

    private func collect(_ body: RequestBody) async throws -> Data {
        do {
            let buffer = try await body.collect(upTo: maximumBodyBytes)
            return Data(buffer.readableBytesView)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw OpenAIError(
                .contentTooLarge, "the request body is larger than \(maximumBodyBytes) bytes, or was cut off")
        }
    }

    private func json(_ value: JSON, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: value.serialized())))
    }

    private func checkTokens(_ ids: [Int], _ served: ServedModel, param: String) throws {
        let vocabulary = served.engine.config.vocabularySize
        if let bad = ids.first(where: { $0 < 0 || $0 >= vocabulary }) {
            throw OpenAIError.badRequest("token id \(bad) is outside the vocabulary (0..<\(vocabulary))", param: param)
        }
    }

    /// The prompt of a conversation. `addGenerationPrompt` defaults to true; `continueFinalMessage`
    /// ends the prompt inside the last message instead, and (as vLLM) both may not be asked for.
    private func render(
        _ messages: [ChatMessage], _ served: ServedModel, addGenerationPrompt: Bool?, continueFinalMessage: Bool
    ) throws -> [Int] {
        guard !messages.isEmpty else { throw OpenAIError.badRequest("'messages' must not be empty", param: "messages") }
        if continueFinalMessage && addGenerationPrompt == true {
            throw OpenAIError.badRequest(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                param: "continue_final_message")
        }
        for (i, message) in messages.enumerated() where !["system", "developer", "user", "assistant"].contains(message.role) {
            throw OpenAIError.badRequest(
                "messages[\(i)].role \(message.role.debugDescription) is not supported: use system, user or assistant",
                param: "messages[\(i)].role")
        }
        let normalized = messages.map { m in
            var m = m
            if m.role == "developer" { m.role = "system" }
            return m
        }
        do {
            return try served.tokenizer.encodeChat(
                normalized, addGenerationPrompt: addGenerationPrompt ?? true, continueFinalMessage: continueFinalMessage)
        } catch let error as TokenizerError {
            throw OpenAIError.badRequest("\(error)", param: "messages")
        }
    }

    // MARK: Requests to plans

    /// Checks shared by both endpoints and fills the plan's sampling side.
    /// `maxTokens` nil: each prompt's completion may use the rest of the context; 0 only where it
    /// scores the prompt (completions with `echo`), as vLLM takes it.
    private func fill(
        _ plan: inout GenerationPlan, _ f: SamplingFields, _ served: ServedModel, maxTokens: Int?, topLogprobs: Int,
        promptLogprobs: Int?
    ) throws {
        try served.requireName(f.model)
        try refuseUnsupported(f)
        let n = f.n ?? 1
        guard (1...16).contains(n) else { throw OpenAIError.badRequest("n must be between 1 and 16, got \(n)", param: "n") }
        if let maxTokens, maxTokens < (plan.echo && plan.style == .completion ? 0 : 1) {
            throw OpenAIError.badRequest(
                "max_tokens must be at least 1, got \(maxTokens) (0 is for scoring a prompt: completions with echo)",
                param: "max_tokens")
        }
        if f.streamOptions != nil && f.stream != true {
            throw OpenAIError.badRequest("Stream options can only be defined when `stream=True`.", param: "stream_options")
        }
        if let p = f.promptLogprobs, !(0...20).contains(p) {
            throw OpenAIError.badRequest("prompt_logprobs must be between 0 and 20", param: "prompt_logprobs")
        }
        if f.promptLogprobs != nil && f.stream == true {
            throw OpenAIError.badRequest("prompt_logprobs is not available when streaming", param: "prompt_logprobs")
        }
        let stop = f.stop?.strings ?? []
        guard stop.count <= 256, stop.allSatisfy({ $0.utf8.count <= 1024 }) else {
            throw OpenAIError.badRequest("at most 256 stop strings of at most 1024 bytes", param: "stop")
        }
        if let keep = f.truncatePromptTokens {
            // vLLM: keep the last `keep` tokens of each prompt; -1 keeps what the context holds.
            guard keep == -1 || (1...served.contextLength).contains(keep) else {
                throw OpenAIError.badRequest(
                    "truncate_prompt_tokens must be -1 or between 1 and the context length (\(served.contextLength)), "
                        + "got \(keep)", param: "truncate_prompt_tokens")
            }
            let limit = keep == -1 ? served.contextLength : keep
            for i in plan.prompts.indices where plan.prompts[i].count > limit {
                plan.prompts[i] = Array(plan.prompts[i].suffix(limit))
                plan.promptTexts[i] = served.tokenizer.decode(plan.prompts[i])
            }
        }
        // Bounded per request, so one request cannot fill the queue on its own.
        guard plan.prompts.count * n <= 32 else {
            throw OpenAIError.badRequest(
                "this request asks for \(plan.prompts.count * n) sequences (prompts × n); at most 32 per request", param: "n")
        }
        plan.n = n
        plan.stop = stop
        plan.skipSpecialTokens = f.skipSpecialTokens ?? true
        plan.stream = f.stream ?? false
        // vLLM: a stream_options object without include_usage means true.
        plan.includeUsage = plan.stream && f.streamOptions.map { $0.includeUsage ?? true } == true
        plan.userStopTokens = Set(f.stopTokenIds ?? [])
        plan.includeStopString = f.includeStopStrInOutput ?? false
        plan.tokensAsIDs = f.returnTokensAsTokenIds ?? false
        plan.continuousUsage = plan.includeUsage && f.streamOptions?.continuousUsageStats == true
        plan.reportPromptLogprobs = f.promptLogprobs != nil
        let stopTokens = try served.stopTokens(f)
        for prompt in plan.prompts {
            guard !prompt.isEmpty else { throw OpenAIError.badRequest("the prompt is empty", param: "prompt") }
            try checkTokens(prompt, served, param: "prompt")
            let budget = try served.completionBudget(
                promptTokens: prompt.count, maxTokens: maxTokens, param: plan.style == .chat ? "messages" : "prompt")
            if let minimum = f.minTokens, minimum > budget {
                throw OpenAIError.badRequest(
                    "min_tokens (\(minimum)) must be at most max_tokens (\(budget))", param: "min_tokens")
            }
            for choice in 0..<n {
                var parameters = GenerationParameters(
                    maxTokens: budget, sampling: try served.sampling(f, choice: choice, stopTokens: stopTokens),
                    stopTokenIDs: stopTokens,
                    topLogprobs: topLogprobs)
                parameters.computeLogprobs = plan.logprobs != nil
                plan.requests.append(SequenceRequest(prompt: prompt, parameters: parameters, promptLogprobs: promptLogprobs))
            }
        }
    }

    /// vLLM request fields whose effect this server does not implement: refused with a 400 that
    /// names them, since a client sending them relies on that effect and silence would mislead it.
    private func refuseUnsupported(_ f: SamplingFields) throws {
        func refuse(_ param: String, _ what: String) -> OpenAIError {
            .badRequest("\(param) is not supported by this server (\(what)); leave it out", param: param)
        }
        if let best = f.bestOf {
            guard best >= (f.n ?? 1) else {
                throw OpenAIError.badRequest("best_of must be at least n, got \(best)", param: "best_of")
            }
            if best > (f.n ?? 1) { throw refuse("best_of", "as in vLLM V1, use n") }
        }
        if f.useBeamSearch == true { throw refuse("use_beam_search", "no beam search") }
        if let words = f.badWords, !words.isEmpty { throw refuse("bad_words", "no banned words") }
        if let ids = f.allowedTokenIds, !ids.isEmpty { throw refuse("allowed_token_ids", "no token masks") }
        if let format = f.responseFormat, format.type != "text" {
            throw refuse("response_format", "no structured output; only {\"type\": \"text\"}")
        }
        if let tools = f.tools, !tools.isEmpty {
            if case .named("none")? = f.toolChoice {} else {
                throw refuse("tools", "no tool calling; send tool_choice \"none\" to keep the definitions in the request")
            }
        } else if let choice = f.toolChoice {
            if case .named(let name) = choice, name == "none" || name == "auto" {} else {
                throw OpenAIError.badRequest("When using `tool_choice`, `tools` must be set.", param: "tool_choice")
            }
        }
        let guided: [(String, PresentValue?)] = [
            ("guided_json", f.guidedJson), ("guided_regex", f.guidedRegex), ("guided_choice", f.guidedChoice),
            ("guided_grammar", f.guidedGrammar), ("structured_outputs", f.structuredOutputs),
            ("structural_tag", f.structuralTag),
        ]
        if let (name, _) = guided.first(where: { $0.1 != nil }) { throw refuse(name, "no structured output") }
    }

    func completionPlan(_ r: CompletionRequest, _ served: ServedModel) throws -> GenerationPlan {
        var plan = GenerationPlan(style: .completion, model: r.sampling.model ?? served.names[0])
        let addSpecial = r.addSpecialTokens ?? true
        switch r.prompt {
        case .texts(let texts):
            guard !texts.isEmpty else { throw OpenAIError.badRequest("the prompt list is empty", param: "prompt") }
            plan.prompts = texts.map { served.tokenizer.encode($0, addSpecialTokens: addSpecial) }
            plan.promptTexts = texts
        case .tokens(let lists):
            guard !lists.isEmpty else { throw OpenAIError.badRequest("the prompt list is empty", param: "prompt") }
            plan.prompts = lists
            plan.promptTexts = lists.map { served.tokenizer.decode($0) }
        }
        guard plan.prompts.count <= 16 else {
            throw OpenAIError.badRequest("at most 16 prompts per request", param: "prompt")
        }
        if r.suffix != nil { throw OpenAIError.badRequest("suffix is not supported", param: "suffix") }
        if let k = r.logprobs, !(0...20).contains(k) {
            throw OpenAIError.badRequest("logprobs must be between 0 and 20, got \(k)", param: "logprobs")
        }
        plan.logprobs = r.logprobs
        plan.echo = r.echo ?? false
        // Echo with logprobs scores the prompt: every prompt token's logprob.
        let promptLogprobs = plan.echo && r.logprobs != nil ? r.logprobs : r.sampling.promptLogprobs
        try fill(
            &plan, r.sampling, served, maxTokens: r.maxTokensIsNull ? nil : r.maxTokens ?? 16, topLogprobs: r.logprobs ?? 0,
            promptLogprobs: promptLogprobs)
        return plan
    }

    func chatPlan(_ r: ChatCompletionRequest, _ served: ServedModel) throws -> GenerationPlan {
        var plan = GenerationPlan(style: .chat, model: r.sampling.model ?? served.names[0])
        if r.chatTemplate != nil {
            throw OpenAIError.badRequest(
                "chat_template is not supported by this server (it renders the model's Gemma 3 template); leave it out",
                param: "chat_template")
        }
        let prompt = try render(
            r.messages, served, addGenerationPrompt: r.addGenerationPrompt, continueFinalMessage: r.continueFinalMessage ?? false)
        // vLLM's chat echo: the answer starts with the last message when it is the assistant's own.
        if r.echo == true, let last = r.messages.last, last.role == "assistant" {
            switch last.content {
            case .text(let text): plan.echoPrefix = text
            case .parts(let parts):
                plan.echoPrefix = parts.compactMap { if case .text(let t) = $0 { t } else { nil } }.joined(separator: "\n")
            }
        }
        plan.prompts = [prompt]
        plan.promptTexts = [served.tokenizer.decode(prompt)]
        let top = r.topLogprobs ?? 0
        guard (0...20).contains(top) else {
            throw OpenAIError.badRequest("top_logprobs must be between 0 and 20, got \(top)", param: "top_logprobs")
        }
        if top > 0 && r.logprobs != true {
            throw OpenAIError.badRequest("top_logprobs needs logprobs set to true", param: "top_logprobs")
        }
        plan.logprobs = r.logprobs == true ? top : nil
        // vLLM: without a limit (nil), a chat answer may use the rest of the context.
        let maxTokens = r.maxCompletionTokens ?? r.maxTokens
        try fill(
            &plan, r.sampling, served, maxTokens: maxTokens, topLogprobs: top, promptLogprobs: r.sampling.promptLogprobs)
        return plan
    }
}
