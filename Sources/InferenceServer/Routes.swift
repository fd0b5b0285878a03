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

    public init() {}

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

    func register(on router: Router<ServerContext>) {
        router.add(middleware: OpenAIErrorMiddleware(metrics: metrics))
        router.get("/health") { _, _ -> Response in
            _ = try state.require()
            return Response(status: .ok)
        }
        router.get("/ping") { _, _ -> Response in
            _ = try state.require()
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
                    return try render(messages, served, addGenerationPrompt: r.addGenerationPrompt ?? true)
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

    private func render(_ messages: [ChatMessage], _ served: ServedModel, addGenerationPrompt: Bool) throws -> [Int] {
        guard !messages.isEmpty else { throw OpenAIError.badRequest("'messages' must not be empty", param: "messages") }
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
            return try served.tokenizer.encodeChat(normalized, addGenerationPrompt: addGenerationPrompt)
        } catch let error as TokenizerError {
            throw OpenAIError.badRequest("\(error)", param: "messages")
        }
    }

    // MARK: Requests to plans

    /// Checks shared by both endpoints and fills the plan's sampling side.
    private func fill(
        _ plan: inout GenerationPlan, _ f: SamplingFields, _ served: ServedModel, maxTokens: Int, topLogprobs: Int,
        promptLogprobs: Int?
    ) throws {
        try served.requireName(f.model)
        let n = f.n ?? 1
        guard (1...16).contains(n) else { throw OpenAIError.badRequest("n must be between 1 and 16, got \(n)", param: "n") }
        guard maxTokens >= 0 else {
            throw OpenAIError.badRequest("max_tokens must be at least 0, got \(maxTokens)", param: "max_tokens")
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
        guard stop.count <= 16, stop.allSatisfy({ $0.utf8.count <= 1024 }) else {
            throw OpenAIError.badRequest("at most 16 stop strings of at most 1024 bytes", param: "stop")
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
        plan.reportPromptLogprobs = f.promptLogprobs != nil
        let stopTokens = try served.stopTokens(f)
        for prompt in plan.prompts {
            guard !prompt.isEmpty else { throw OpenAIError.badRequest("the prompt is empty", param: "prompt") }
            try checkTokens(prompt, served, param: "prompt")
            try served.checkContext(promptTokens: prompt.count, maxTokens: maxTokens)
            for choice in 0..<n {
                var parameters = GenerationParameters(
                    maxTokens: maxTokens, sampling: try served.sampling(f, choice: choice), stopTokenIDs: stopTokens,
                    topLogprobs: topLogprobs)
                parameters.computeLogprobs = plan.logprobs != nil
                plan.requests.append(SequenceRequest(prompt: prompt, parameters: parameters, promptLogprobs: promptLogprobs))
            }
        }
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
        if plan.echo && r.sampling.stream == true && r.logprobs != nil {
            throw OpenAIError.badRequest("echo with logprobs is not available when streaming", param: "echo")
        }
        // Echo with logprobs scores the prompt: every prompt token's logprob.
        let promptLogprobs = plan.echo && r.logprobs != nil ? r.logprobs : r.sampling.promptLogprobs
        try fill(
            &plan, r.sampling, served, maxTokens: r.maxTokens ?? 16, topLogprobs: r.logprobs ?? 0,
            promptLogprobs: promptLogprobs)
        return plan
    }

    func chatPlan(_ r: ChatCompletionRequest, _ served: ServedModel) throws -> GenerationPlan {
        var plan = GenerationPlan(style: .chat, model: r.sampling.model ?? served.names[0])
        if r.continueFinalMessage == true {
            throw OpenAIError.badRequest("continue_final_message is not supported", param: "continue_final_message")
        }
        let prompt = try render(r.messages, served, addGenerationPrompt: r.addGenerationPrompt ?? true)
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
        // vLLM: without a limit, a chat answer may use the rest of the context.
        let maxTokens = r.maxCompletionTokens ?? r.maxTokens ?? max(0, served.contextLength - prompt.count)
        try fill(
            &plan, r.sampling, served, maxTokens: maxTokens, topLogprobs: top, promptLogprobs: r.sampling.promptLogprobs)
        return plan
    }
}
