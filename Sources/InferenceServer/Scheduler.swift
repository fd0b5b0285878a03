import Foundation
import Inference

/// What one sequence asks of the engine: the prompt ids and how to generate after them.
public struct SequenceRequest: Sendable {
    public var prompt: [Int]
    public var parameters: GenerationParameters
    /// Report each prompt token's logprob and this many alternatives (echo + logprobs, prompt_logprobs).
    public var promptLogprobs: Int?

    public init(prompt: [Int], parameters: GenerationParameters, promptLogprobs: Int? = nil) {
        self.prompt = prompt
        self.parameters = parameters
        self.promptLogprobs = promptLogprobs
    }
}

/// What the engine reports for one sequence, in order: optionally the prompt's logprobs, then the
/// generated tokens, then exactly one `finished` or `failed`.
public enum SequenceEvent: Sendable {
    /// One entry per prompt token; the first is nil (nothing predicts it).
    case promptLogprobs([GeneratedToken?])
    case token(GeneratedToken)
    case finished(FinishReason)
    case failed(String)
}

/// Why a request was not admitted; the HTTP layer turns each into a status.
public enum AdmissionError: Error, Sendable {
    /// Too many requests are queued: try again later (429 with Retry-After).
    case queueFull(waiting: Int)
    /// The server is shutting down (503).
    case shuttingDown
    /// This request alone needs more KV cache than the server may use (400).
    case exceedsMemory(needed: Int, limit: Int)
    /// This request has more sequences than the server ever holds at once (running plus waiting):
    /// no retry can succeed (400).
    case tooManySequences(requested: Int, limit: Int)
}

/// The limits that keep the server's memory bounded whatever the load.
public struct SchedulerLimits: Sendable {
    /// Sequences decoded together in one step (vLLM's --max-num-seqs).
    public var maximumRunning: Int
    /// Requests allowed to wait for a place among the running ones; past it, 429.
    public var maximumWaiting: Int
    /// Bytes of KV cache all running sequences may hold together.
    public var cacheBytes: Int
    /// Prompt tokens prefilled per step at most (one request is always admitted when a place is free).
    public var prefillTokensPerStep: Int

    public init(maximumRunning: Int = 16, maximumWaiting: Int = 256, cacheBytes: Int = 4 << 30, prefillTokensPerStep: Int = 128) {
        self.maximumRunning = maximumRunning
        self.maximumWaiting = maximumWaiting
        self.cacheBytes = cacheBytes
        self.prefillTokensPerStep = prefillTokensPerStep
    }
}

/// A submitted sequence: its events as they happen, and a way to stop it early.
public final class SequenceHandle: Sendable {
    public let events: AsyncStream<SequenceEvent>
    let job: Job

    init(events: AsyncStream<SequenceEvent>, job: Job) {
        self.events = events
        self.job = job
    }

    /// Stops generation at the next step because the client went away (counted as aborted).
    public func cancel() { job.cancel() }

    /// Stops generation at the next step because the output is complete (a stop string matched).
    public func finishEarly() { job.cancel(complete: true) }
}

/// One sequence as the engine thread sees it. The cancel flag is the only state shared with other
/// threads (under its lock); everything else belongs to the engine thread.
final class Job: @unchecked Sendable {
    let request: SequenceRequest
    let continuation: AsyncStream<SequenceEvent>.Continuation
    let submitted = ContinuousClock.now
    private let lock = NSLock()
    private var cancelled = false

    // Engine thread only.
    /// The job's `BatchRunner<Backend>.Slot` while it runs (typed by the scheduler that owns it).
    var slot: AnyObject?
    var sampler: Sampler
    var generated = 0
    /// Prompt tokens already in the slot's cache (prefill goes in chunks, beside other sequences' decodes).
    var prefilled = 0
    var promptEntries: [GeneratedToken?] = [nil]
    var next: Int?
    var cacheBytes = 0
    /// Greedy without penalties or logprobs: the runner picks the token where the logits are, and
    /// on a GPU only its id comes back.
    let argmaxOnly: Bool
    /// The logprobs wanted with each token: the chosen one's and this many alternatives (nil: none).
    /// On a backend that draws where the logits are (a GPU), the runner draws the token there
    /// (`TokenDraw`, with a seed and the penalties from the job's sampler) and computes these there
    /// too, so only a few numbers come back; beyond `TokenDraw.maximumLogprobs` the logits do.
    let logprobs: Int?
    var lastToken: ContinuousClock.Instant?

    init(request: SequenceRequest, continuation: AsyncStream<SequenceEvent>.Continuation) {
        self.request = request
        self.continuation = continuation
        sampler = Sampler(parameters: request.parameters.sampling, prompt: request.prompt)
        let p = request.parameters
        logprobs = p.topLogprobs > 0 || p.computeLogprobs ? p.topLogprobs : nil
        argmaxOnly = p.sampling.isPlainArgmax && logprobs == nil
    }

    /// How the runner should choose this job's next token: nil for the logits (the host `Sampler`).
    func draw(onDevice: Bool) -> TokenDraw? {
        if argmaxOnly { return .argmax }
        guard onDevice && (logprobs ?? 0) <= TokenDraw.maximumLogprobs else { return nil }
        return sampler.nextDraw()
    }

    /// The draw `draw(onDevice:)` will give for the step after this one, as far as it is known now:
    /// its seed, not yet taken, and its penalties without the token this step chooses (the device
    /// counts that one: `Sampler.upcomingPenalties`). The runner queues that step before this one's
    /// token comes back (`BatchRunner.Work.nextDraw`), with the same logprobs; a plain argmax
    /// without logprobs needs none.
    func upcomingDraw() -> TokenDraw? {
        guard !argmaxOnly else { return nil }
        return sampler.upcomingDraw()
    }

    /// Whether the early stop ended the output normally (a stop string), not a departed client.
    private var completedEarly = false

    func cancel(complete: Bool = false) {
        lock.lock()
        cancelled = true
        if complete { completedEarly = true }
        lock.unlock()
    }

    var isComplete: Bool {
        lock.lock()
        defer { lock.unlock() }
        return completedEarly
    }

    var isCancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return cancelled
    }
}

/// What the HTTP side needs of a scheduler, whatever backend runs it.
public protocol RequestScheduler: AnyObject, Sendable {
    var limits: SchedulerLimits { get }
    var contextLength: Int { get }
    /// Starts the engine thread.
    func start()
    /// Queues every sequence of one request, or none of them.
    func submit(_ requests: [SequenceRequest]) throws(AdmissionError) -> [SequenceHandle]
    func beginDraining()
    var inFlight: Int { get }
    func stop(reason: String)
    func cacheBytes(positions: Int) -> Int
}

extension RequestScheduler {
    /// Queues one sequence.
    public func submit(_ request: SequenceRequest) throws(AdmissionError) -> SequenceHandle {
        try submit([request])[0]
    }
}

/// Continuous batching on one engine thread: between decode steps it admits waiting requests
/// (prefilling their prompts), then advances every running sequence by one token in a single batched
/// forward pass, and retires the ones that finished. Requests beyond the running limit wait in a
/// bounded queue; KV cache memory is reserved per sequence (prompt + max tokens) against a budget.
public final class Scheduler<Backend: ComputeBackend>: RequestScheduler, @unchecked Sendable {
    public let limits: SchedulerLimits
    public let contextLength: Int
    let metrics: ServerMetrics
    let runner: BatchRunner<Backend>

    // Shared with request tasks, under `condition`.
    private let condition = NSCondition()
    private var incoming: [Job] = []
    /// Submitted but not yet running (incoming plus the engine's waiting list).
    private var queued = 0
    private var draining = false
    private var stopping = false
    private var thread: Thread?

    // Engine thread only.
    private var waiting: [Job] = []
    private var running: [Job] = []
    private var freeSlots: [BatchRunner<Backend>.Slot] = []
    private var usedBytes = 0

    public init(model: Gemma3Model<Backend>, contextLength: Int, limits: SchedulerLimits, metrics: ServerMetrics) {
        self.limits = limits
        self.contextLength = contextLength
        self.metrics = metrics
        runner = BatchRunner(model: model, maximumSequences: limits.maximumRunning, prefillChunk: 128)
        metrics.setCacheLimit(bytes: limits.cacheBytes)
    }

    /// Starts the engine thread.
    public func start() {
        let thread = Thread { [self] in loop() }
        thread.name = "engine"
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
    }

    /// Bytes of KV cache a sequence of `positions` tokens holds.
    public func cacheBytes(positions: Int) -> Int { runner.cacheBytes(positions: positions, contextLength: contextLength) }

    /// Queues the sequences of one request (its prompts × n), all or none: a refused request leaves
    /// nothing behind that would count against the next one. Throws when they would not fit the
    /// queue now (429), could never fit it or the cache budget (400), or the server is draining.
    public func submit(_ requests: [SequenceRequest]) throws(AdmissionError) -> [SequenceHandle] {
        let capacity = limits.maximumRunning + limits.maximumWaiting
        if requests.count > capacity { throw .tooManySequences(requested: requests.count, limit: capacity) }
        var largest = 1
        for request in requests {
            let positions = request.prompt.count.addingReportingOverflow(request.parameters.maxTokens)
            let needed = positions.overflow ? Int.max : cacheBytes(positions: positions.partialValue)
            if needed > limits.cacheBytes { throw .exceedsMemory(needed: needed, limit: limits.cacheBytes) }
            largest = max(largest, needed)
        }
        condition.lock()
        defer { condition.unlock() }
        if draining || stopping { throw .shuttingDown }
        // Queued sequences that free places in the batch will take at once are not waiting: only
        // the rest count against maximumWaiting (4 requests at once with 1 place and 1 waiting: 2
        // admitted). A place counts only while the KV budget has room for it (sized as the largest
        // of these), since `admit` leaves sequences waiting for memory.
        let places = max(0, limits.maximumRunning - runningCount)
        let room = max(runningCount == 0 ? 1 : 0, (limits.cacheBytes - reservedBytes) / largest)
        let waitingAfter = queued + requests.count - min(places, room)
        if waitingAfter > limits.maximumWaiting { throw .queueFull(waiting: max(0, queued - min(places, room))) }
        let handles = requests.map { request in
            let (events, continuation) = AsyncStream<SequenceEvent>.makeStream()
            let job = Job(request: request, continuation: continuation)
            // A consumer that goes away (client disconnect, task cancelled) stops the sequence.
            continuation.onTermination = { [weak job] _ in job?.cancel() }
            incoming.append(job)
            return SequenceHandle(events: events, job: job)
        }
        queued += requests.count
        metrics.setWaiting(queued)
        condition.signal()
        return handles
    }

    /// Stops admitting new requests; running and queued ones go on.
    public func beginDraining() {
        condition.lock()
        draining = true
        condition.unlock()
    }

    /// Requests submitted and not yet finished.
    public var inFlight: Int {
        condition.lock()
        defer { condition.unlock() }
        return queued + runningCount
    }
    private var runningCount = 0  // under `condition`, mirrors running.count
    private var reservedBytes = 0  // under `condition`, mirrors usedBytes

    /// Ends every sequence (those still going get `failed` with `reason`) and stops the engine thread.
    public func stop(reason: String) {
        condition.lock()
        stopping = true
        stopReason = reason
        condition.signal()
        condition.unlock()
    }
    private var stopReason = ""

    // MARK: The engine loop

    private func loop() {
        while true {
            condition.lock()
            while incoming.isEmpty && waiting.isEmpty && running.isEmpty && !stopping { condition.wait() }
            if stopping {
                let reason = stopReason
                let all = waiting + incoming + running
                incoming.removeAll()
                queued = 0
                condition.unlock()
                for job in all { job.continuation.yield(.failed(reason)); job.continuation.finish() }
                waiting.removeAll()
                running.removeAll()
                metrics.setWaiting(0)
                metrics.setRunning(0)
                return
            }
            waiting += incoming
            incoming.removeAll()
            condition.unlock()

            retireCancelled()
            admit()
            step()

            condition.lock()
            runningCount = running.count
            reservedBytes = usedBytes
            queued = waiting.count + incoming.count
            metrics.setWaiting(queued)
            condition.unlock()
            metrics.setRunning(running.count)
            metrics.setCacheUsed(bytes: usedBytes)
        }
    }

    private func retireCancelled() {
        waiting.removeAll { job in
            guard job.isCancelled else { return false }
            job.continuation.finish()
            metrics.addAborted()
            return true
        }
        for job in running where job.isCancelled { release(job, finish: job.isComplete ? .stop : nil) }
    }

    /// Moves waiting requests into the running set while there is room (a free place among the
    /// running and KV cache memory for prompt + max tokens); their prompts are prefilled by `step`.
    private func admit() {
        while let job = waiting.first, running.count < limits.maximumRunning {
            let bytes = cacheBytes(positions: job.request.prompt.count + job.request.parameters.maxTokens)
            if usedBytes + bytes > limits.cacheBytes && !running.isEmpty { break }  // wait for memory to free
            waiting.removeFirst()
            job.cacheBytes = bytes
            usedBytes += bytes
            job.slot = takeSlot(for: job)
            running.append(job)
            metrics.observeQueueTime(seconds: (ContinuousClock.now - job.submitted).seconds)
        }
    }

    /// The slot of a running job (set when it was admitted).
    private func slot(of job: Job) -> BatchRunner<Backend>.Slot {
        job.slot as! BatchRunner<Backend>.Slot
    }

    /// A free slot for the job: the one whose cache holds the longest intact beginning of its prompt
    /// (a repeated system prompt, the earlier turns of a chat), whose prefill is then skipped; else
    /// the most recently freed one, or a new one. Prompt logprobs need every prompt position
    /// computed, so those requests reuse nothing.
    private func takeSlot(for job: Job) -> BatchRunner<Backend>.Slot {
        let prompt = job.request.prompt
        var best: (index: Int, shared: Int)? = nil
        if job.request.promptLogprobs == nil {
            for (index, slot) in freeSlots.enumerated() {
                let shared = slot.reusablePrefix(of: prompt)
                if shared > (best?.shared ?? 0) { best = (index, shared) }
            }
        }
        metrics.addPrefixCacheQuery(tokens: prompt.count, hits: best?.shared ?? 0)
        if let best {
            let slot = freeSlots.remove(at: best.index)
            slot.keep(prefix: best.shared)
            job.prefilled = best.shared
            return slot
        }
        let slot = freeSlots.popLast() ?? runner.makeSlot(contextLength: contextLength)
        slot.reset()
        return slot
    }

    /// One forward pass for every running sequence: the next token of each decoding one and, within
    /// the prefill budget, the next prompt chunk of those still prefilling (in arrival order). A long
    /// prompt so delays the running streams by one larger step per chunk, never by its whole prefill.
    private func step() {
        var work: [BatchRunner<Backend>.Work] = []
        var owners: [(job: Job, chunk: Int?)] = []
        for job in running where job.next != nil {
            var item = BatchRunner<Backend>.Work(slot: slot(of: job), tokens: [job.next!])
            item.draw = job.draw(onDevice: drawsOnDevice)
            if item.draw != nil {
                item.logprobs = job.logprobs
                // The next draw only where a step can be queued ahead (a copy of a penalized
                // request's history otherwise made for nothing each step).
                if pipelines { item.nextDraw = job.upcomingDraw() }
            }
            // Its last token: no step is queued ahead for it (the slot may go to another request).
            item.isLast = job.generated + 1 >= job.request.parameters.maxTokens
            work.append(item)
            owners.append((job, nil))
        }
        // A step queued ahead (a GPU's pipelined decode) has these rows' tokens on their way: a prompt
        // waiting to start would make this a mixed step, which drops it, so that step is taken first,
        // with none queued after it, and the prompt starts in the next. The prompt waits no longer
        // (the mixed step would have waited for the queued one to finish), and the streams gain a token.
        let promptWaiting = running.contains { $0.next == nil && $0.prefilled < $0.request.prompt.count }
        let takeAheadFirst = promptWaiting && runner.takesStepAhead(work)
        var budget = takeAheadFirst ? 0 : min(limits.prefillTokensPerStep, runner.stepCapacity - work.count)
        for job in running where job.next == nil && job.prefilled < job.request.prompt.count && budget > 0 {
            let prompt = job.request.prompt
            let count = min(prompt.count - job.prefilled, runner.prefillChunk, budget)
            budget -= count
            var item = BatchRunner<Backend>.Work(slot: slot(of: job), tokens: Array(prompt[job.prefilled..<job.prefilled + count]))
            // A chunk before the last one: its token is not used, so only an id comes back (and the
            // sampler's seeds do not depend on how the prompt was cut); a scored one (below) asks
            // for nothing more than its scores.
            let last = job.prefilled + count == prompt.count
            item.draw = last ? job.draw(onDevice: drawsOnDevice) : .argmax
            if last && item.draw != nil { item.logprobs = job.logprobs }
            if let top = job.request.promptLogprobs {
                // The logits after prompt token i score token i + 1, where the logits are (on a GPU,
                // only the numbers come back); the prompt's last token scores nothing.
                let targets = Array(prompt[job.prefilled + 1..<min(prompt.count, job.prefilled + count + 1)])
                item.scores = .init(targets: targets, top: top) { [job] in job.promptEntries.append($0) }
            }
            work.append(item)
            owners.append((job, count))
        }
        guard !work.isEmpty else { return }
        let outputs: [BatchRunner<Backend>.Output]
        do {
            outputs = try runner.outputs(work, queueAhead: !takeAheadFirst)
        } catch {
            for owner in owners { release(owner.job, failure: "\(error)") }
            return
        }
        // The rows a token is chosen from: every decoding sequence's, and a prompt's last chunk's.
        var choices: [(job: Job, output: BatchRunner<Backend>.Output)] = []
        for (owner, row) in zip(owners, outputs) {
            let job = owner.job
            guard let chunk = owner.chunk else {
                choices.append((job, row))
                continue
            }
            job.prefilled += chunk
            guard job.prefilled == job.request.prompt.count else { continue }
            metrics.addPromptTokens(job.request.prompt.count)
            if job.request.promptLogprobs != nil { job.continuation.yield(.promptLogprobs(job.promptEntries)) }
            if job.request.parameters.maxTokens == 0 {
                release(job, finish: .length)
            } else {
                choices.append((job, row))
            }
        }
        let drawn = drawTogether(choices)
        for (choice, token) in zip(choices, drawn) { choose(choice.job, from: choice.output, drawn: token) }
    }

    /// The tokens of the choices that came back as logits (a backend that does not draw, the CPU),
    /// all drawn at once over the cores; each job's own sampler draws what it would alone. nil for
    /// the others, and for all when fewer than two would be drawn here (`choose` draws those).
    private func drawTogether(_ choices: [(job: Job, output: BatchRunner<Backend>.Output)]) -> [GeneratedToken?] {
        var drawn = [GeneratedToken?](repeating: nil, count: choices.count)
        let rows = choices.enumerated().compactMap { index, choice -> (index: Int, logits: [Float])? in
            guard case .logits(let logits) = choice.output else { return nil }
            return (index, logits)
        }
        guard rows.count > 1 else { return drawn }
        var samplers = rows.map { choices[$0.index].job.sampler }
        let parameters = rows.map { choices[$0.index].job.request.parameters }
        let tokens = Sampler.next(
            &samplers, logits: rows.map(\.logits), topLogprobs: parameters.map(\.topLogprobs),
            computeLogprobs: parameters.map(\.computeLogprobs))
        for (i, row) in rows.enumerated() {
            choices[row.index].job.sampler = samplers[i]
            drawn[row.index] = tokens[i]
        }
        return drawn
    }

    private var drawsOnDevice: Bool { runner.model.backend.drawsOnDevice }
    /// Whether decode steps may be queued ahead (`BatchRunner.pipelining`, `INFERENCE_PIPELINE`).
    private var pipelines: Bool { runner.pipelining && runner.model.backend.pipelinesSteps }

    /// Samples the job's next token from the step's logits (or takes the token the runner chose, or
    /// the one `drawTogether` drew), reports it, and retires the job if it is done.
    private func choose(_ job: Job, from output: BatchRunner<Backend>.Output, drawn: GeneratedToken?) {
        let parameters = job.request.parameters
        let token: GeneratedToken
        switch output {
        case .logits(let logits):
            token = drawn ?? job.sampler.next(logits, topLogprobs: parameters.topLogprobs, computeLogprobs: parameters.computeLogprobs)
        case .token(let drawn):
            job.sampler.accept(drawn.id)
            token = drawn
        }
        let now = ContinuousClock.now
        if let last = job.lastToken {
            metrics.observeInterTokenLatency(seconds: (now - last).seconds)
        } else {
            metrics.observeTimeToFirstToken(seconds: (now - job.submitted).seconds)
        }
        job.lastToken = now
        job.generated += 1
        metrics.addGenerationTokens(1)
        if case .terminated = job.continuation.yield(.token(token)) { job.cancel() }
        if job.isCancelled {
            release(job, finish: job.isComplete ? .stop : nil)
        } else if parameters.stopTokenIDs.contains(token.id) {
            release(job, finish: .stop)
        } else if job.generated >= parameters.maxTokens || slot(of: job).tokenCount >= slot(of: job).contextLength {
            release(job, finish: .length)
        } else {
            job.next = token.id
        }
    }

    /// Takes the job out of the running set, returns its slot and memory, and ends its events.
    private func release(_ job: Job, finish: FinishReason?, failure: String? = nil) {
        running.removeAll { $0 === job }
        job.next = nil
        if let slot = job.slot as? BatchRunner<Backend>.Slot {
            // Only slots at their initial size are kept for reuse: a slot that grew for a long
            // sequence is freed, so that memory stays within what running sequences reserve.
            if slot.cacheBytes <= runner.cacheBytes(positions: 0, contextLength: contextLength) { freeSlots.append(slot) }
            job.slot = nil
        }
        usedBytes -= job.cacheBytes
        job.cacheBytes = 0
        if let failure {
            job.continuation.yield(.failed(failure))
        } else if let finish {
            job.continuation.yield(.finished(finish))
            metrics.addFinished(finish, seconds: (ContinuousClock.now - job.submitted).seconds)
        } else {
            metrics.addAborted()
        }
        job.continuation.finish()
    }

    private func release(_ job: Job, failure: String) { release(job, finish: nil, failure: failure) }
}

extension Duration {
    var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) * 1e-18
    }
}
