/// Runs many sequences on one model for a continuous-batching scheduler: each sequence has its own
/// `Slot` (KV cache and length), prompts are prefilled one slot at a time in chunks, and a decode step
/// advances every given slot by one token in a single forward pass, so the weights are read once
/// per step however many sequences are running (gemma3-and-serving.md §7: slots, no paging; the
/// sliding-window layers keep a small ring per slot).
///
/// Not `Sendable`: one engine thread owns the runner and its slots; the scratch buffers are shared
/// by every call.
public final class BatchRunner<Backend: ComputeBackend> {
    /// One sequence's place in the batch: its KV cache and how many tokens it holds.
    public final class Slot {
        let cache: KVCache<Backend>
        /// Prompt plus generated tokens may not exceed this.
        public let contextLength: Int
        /// Tokens in the cache: the position of the next token.
        public var tokenCount: Int { tokens.count }
        /// The tokens whose keys and values the cache holds, by position.
        public fileprivate(set) var tokens: [Int] = []

        init(cache: KVCache<Backend>, contextLength: Int) {
            self.cache = cache
            self.contextLength = contextLength
        }

        /// Counts resets and cuts, so that a step queued ahead for this slot is not taken for work
        /// that only looks the same (see `BatchRunner.outputs`).
        fileprivate var generation = 0
        /// Positions this sequence has written keys and values to (since its reset): its tokens, and
        /// one more when a step queued ahead was dropped, or more when `keep` cut it back. Those rows
        /// are in the cache's rings whether or not the slot counts them (see `reusablePrefix`).
        fileprivate var written = 0

        /// Forgets every token; the cache memory is kept for the next sequence.
        public func reset() {
            tokens.removeAll(keepingCapacity: true)
            generation += 1
            written = 0
        }

        /// How many leading tokens of `prompt` this slot's cache already holds intact, so a sequence
        /// starting with them can skip their prefill (automatic prefix caching). At least one prompt
        /// token is always left to compute, for its logits.
        ///
        /// The sliding-window layers keep a ring: the old sequence's positions past the shared prefix
        /// may have overwritten ring slots of positions the new one still attends to. A query at p ≥ L
        /// reads back to L - window + 1; old position q overwrote slot q % capacity, i.e. position
        /// q - capacity. So the prefix L is intact when every old position is below
        /// max(0, L - window + 1) + capacity on every windowed layer.
        public func reusablePrefix(of prompt: [Int]) -> Int {
            var shared = 0
            let limit = min(prompt.count - 1, tokens.count)
            while shared < limit && tokens[shared] == prompt[shared] { shared += 1 }
            guard shared > 0 else { return 0 }
            let extent = max(tokens.count, written)
            for layer in cache.layers {
                guard let window = layer.window else { continue }
                if extent > max(0, shared - window + 1) + layer.capacity { return 0 }
            }
            return shared
        }

        /// Keeps the first `count` tokens' keys and values and forgets the rest.
        public func keep(prefix count: Int) {
            precondition(count <= tokens.count)
            written = max(written, tokens.count)
            tokens.removeLast(tokens.count - count)
            generation += 1
        }

        /// Bytes its KV cache holds now (the global layers keep whatever they grew to).
        public var cacheBytes: Int {
            cache.layers.reduce(0) { $0 + 2 * $1.capacity * cache.rowSize * cache.backend.cacheElementBytes }
        }
    }

    public let model: Gemma3Model<Backend>
    /// Rows in one decode pass (more slots are decoded in several passes).
    public let maximumSequences: Int
    /// Prompt tokens per prefill pass.
    public let prefillChunk: Int
    private let prefillScratch: InferenceSession<Backend>.Scratch
    private let stepScratch: InferenceSession<Backend>.Scratch
    /// `model`, handing a step to the device in one piece (see `queueStep`).
    private let wholeStepModel: Gemma3Model<Backend>

    public init(model: Gemma3Model<Backend>, maximumSequences: Int, prefillChunk: Int = 128) {
        self.model = model
        self.maximumSequences = max(1, maximumSequences)
        self.prefillChunk = max(1, prefillChunk)
        var whole = model
        whole.layersPerSubmission = 0
        wholeStepModel = whole
        prefillScratch = .init(model.backend, model.config, batch: self.prefillChunk)
        stepScratch = .init(
            model.backend, model.config, batch: self.prefillChunk + self.maximumSequences, logitRows: self.maximumSequences)
    }

    /// A new empty slot (allocates its KV cache: keep and `reset` slots rather than making one per request).
    public func makeSlot(contextLength: Int? = nil) -> Slot {
        let limit = min(contextLength ?? model.config.maxPositionEmbeddings, model.config.maxPositionEmbeddings)
        return Slot(
            cache: KVCache(backend: model.backend, config: model.config, contextLimit: limit, maximumBatch: prefillChunk),
            contextLength: limit)
    }

    /// Bytes of KV cache a slot holds once it has seen `positions` tokens: the sliding-window layers'
    /// fixed rings plus the global layers, which grow by doubling from 1024 positions.
    public func cacheBytes(positions: Int, contextLength: Int? = nil) -> Int {
        let c = model.config
        let limit = min(contextLength ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings)
        let row = 2 * c.kvHeadCount * c.headDimension * model.backend.cacheElementBytes  // keys and values
        var global = min(limit, max(1024, prefillChunk))
        while global < positions && global < limit { global = min(limit, global * 2) }
        return c.layerTypes.reduce(0) { total, type in
            let sliding = type == .sliding && c.slidingWindow < limit
            return total + row * (sliding ? min(limit, c.slidingWindow + prefillChunk - 1) : global)
        }
    }

    /// Appends `tokens` to the slot (in chunks of `prefillChunk`) and returns the logits (vocab) that
    /// predict the next token.
    public func prefill(_ slot: Slot, _ tokens: [Int]) throws -> [Float] {
        guard !tokens.isEmpty else { throw InferenceError.invalidArgument("no tokens to process: the prompt is empty") }
        finishAhead()
        try check(tokens)
        guard slot.tokenCount + tokens.count <= slot.contextLength else {
            throw InferenceError.contextOverflow(requested: slot.tokenCount + tokens.count, limit: slot.contextLength)
        }
        slot.cache.reserve(positions: slot.tokenCount + tokens.count, kept: slot.tokenCount)
        var start = 0
        var last: [Float] = []
        while start < tokens.count {
            let batch = Array(tokens[start..<min(tokens.count, start + prefillChunk)])
            model.forward(batch, firstPosition: slot.tokenCount, scratch: prefillScratch, cache: slot.cache)
            slot.tokens += batch
            if start + batch.count == tokens.count { last = model.logits(row: batch.count - 1, scratch: prefillScratch) }
            start += batch.count
        }
        return last
    }

    /// One token more for each slot (`tokens[i]` goes to `slots[i]`), decoded together; returns each
    /// slot's next-token logits in the same order.
    public func decode(_ slots: [Slot], tokens: [Int]) throws -> [[Float]] {
        precondition(slots.count == tokens.count, "one token per slot")
        var result: [[Float]] = []
        var start = 0
        while start < slots.count {
            let range = start..<min(slots.count, start + maximumSequences)
            result += try step(zip(slots[range], tokens[range]).map { Work(slot: $0, tokens: [$1]) })
            start = range.upperBound
        }
        return result
    }

    /// One greedy token more for each slot, chosen where the logits are (on a GPU only the token ids
    /// come back): `decode` followed by argmax, without moving the logits.
    public func decodeGreedy(_ slots: [Slot], tokens: [Int]) throws -> [Int] {
        precondition(slots.count == tokens.count, "one token per slot")
        var result: [Int] = []
        var start = 0
        while start < slots.count {
            let range = start..<min(slots.count, start + maximumSequences)
            let work = zip(slots[range], tokens[range]).map { slot, token in
                var item = Work(slot: slot, tokens: [token])
                item.greedy = true
                return item
            }
            // More slots than one step takes: steps of different slots alternate, and each would drop
            // the step the other queued ahead, so none is queued.
            result += try outputs(work, pipelined: slots.count <= maximumSequences).map {
                guard case .token(let token) = $0 else { preconditionFailure("a greedy token was asked for") }
                return token.id
            }
            start = range.upperBound
        }
        return result
    }

    /// A slot's share of a mixed step: its next token (decode) or a chunk of its prompt.
    public struct Work {
        public var slot: Slot
        public var tokens: [Int]
        /// Only the next token is wanted, not the logits: it is chosen as this says where the logits
        /// are (on a GPU, only the id comes back).
        public var draw: TokenDraw?
        /// With a `draw`: the drawn token's logprob and this many most likely alternatives are
        /// wanted too, computed where the logits are (`ComputeBackend.sample(_:...:logprobs:)`).
        public var logprobs: Int?
        /// The draw this slot's next decode step will ask, where the caller knows it ahead (a
        /// sampler's next seed, and its penalties without the token this step draws, which the
        /// device counts: `Sampler.upcomingPenalties`): a step drawn so is pipelined as a greedy one
        /// is (the step after it queued before this one is read back). A plain argmax needs none:
        /// the next is an argmax too. A guess that turns out wrong only costs the step queued ahead.
        public var nextDraw: TokenDraw?
        /// The sequence ends with this step's token, whatever it is (its length limit): no step is
        /// queued ahead for it.
        public var isLast = false
        /// Prompt logprobs computed where the logits are: row i of the chunk scores `targets[i]`
        /// (the prompt token after it) with `top` alternatives, reported in row order. Rows past
        /// `targets` (the prompt's last token) are not scored. When every row is scored (a chunk
        /// before the prompt's last), nothing else is computed: the item's output is empty logits.
        public var scores: RowScores?

        /// The argmax token is wanted (`draw` = `.argmax`).
        public var greedy: Bool {
            get { draw?.isPlainArgmax ?? false }
            set { draw = newValue ? .argmax : nil }
        }

        public init(slot: Slot, tokens: [Int]) {
            self.slot = slot
            self.tokens = tokens
        }
    }

    /// Most rows one mixed step takes: a prefill chunk beside a full batch of decodes.
    public var stepCapacity: Int { prefillChunk + maximumSequences }

    /// What `Work.scores` asks: the token each row predicts, and where each row's logprobs go.
    public struct RowScores {
        public var targets: [Int]
        public var top: Int
        public var report: (GeneratedToken) -> Void

        public init(targets: [Int], top: Int, report: @escaping (GeneratedToken) -> Void) {
            self.targets = targets
            self.top = top
            self.report = report
        }
    }

    /// What a step gives for one work item: the logits after its last token, or, for work with a
    /// `draw`, the token itself (its logprobs NaN and empty unless the work asked for `logprobs`).
    public enum Output {
        case logits([Float])
        case token(GeneratedToken)
    }

    /// One forward pass over several slots at once, decode tokens and prompt chunks mixed (at most
    /// `stepCapacity` tokens, `maximumSequences` slots, each chunk at most `prefillChunk`): every
    /// weight is read once for all of them. Returns, per work item, the logits after its last token
    /// (none for an item whose `scores` cover every row).
    public func step(_ work: [Work]) throws -> [[Float]] {
        try outputs(work.map { var item = $0; item.draw = nil; return item }).map {
            guard case .logits(let logits) = $0 else { preconditionFailure("logits were asked for") }
            return logits
        }
    }

    // MARK: pipelined decode steps

    /// Whether decode steps whose tokens are chosen on the device (greedy, or drawn, with or without
    /// logprobs) are pipelined where the backend can (`ComputeBackend.pipelinesSteps`; gpu-check
    /// times both ways).
    public var pipelining = true
    /// Steps whose work a step queued ahead had done (for checks that the pipeline runs, not only
    /// queues and drops).
    public private(set) var stepsTakenAhead = 0

    /// A step queued before the host read the tokens it takes: the slots of its rows, each slot's
    /// generation and position then, each row's draw, its place, and (once the step before was read
    /// back) the tokens it embeds.
    private struct Queued {
        /// Weak: a slot the scheduler lets go of is freed now, not when this step is forgotten.
        struct Row { weak var slot: Slot? }
        let rows: [Row]
        let generations: [Int]
        let positions: [Int]
        let draws: [TokenDraw]
        /// Each row's logprobs, as `Work.logprobs`.
        let logprobs: [Int?]
        let place: Int
        /// The backend's `pipelineStamp` once it was queued: another argmax or draw since (another
        /// runner's) has overwritten the ids it leaves on the device.
        var stamp = 0
        var inputs: [Int] = []
    }
    private var ahead: Queued?
    private var nextPlace = 0

    private func takePlace() -> Int {
        defer { nextPlace = (nextPlace + 1) % pipelinePlaces }
        return nextPlace
    }

    /// Most rows a pipelined step takes (the backend's argmax buffers hold 256 without regrowing,
    /// which would wait for the device in the middle of a step; its sampling buffers grow to the
    /// rows a step draws, on the first step that draws that many).
    public static var pipelinedRows: Int { 256 }

    /// Work that a pipelined step can do: one token for each of distinct slots, each drawn where the
    /// logits are (with its logprobs, if asked), without prompt scores, on a backend that pipelines
    /// and queues these draws.
    private func pipelinable(_ work: [Work]) -> Bool {
        guard pipelining, model.backend.pipelinesSteps, work.count <= min(maximumSequences, Self.pipelinedRows),
            work.allSatisfy({ $0.tokens.count == 1 && $0.draw != nil && $0.scores == nil }),
            model.backend.queuesDraws(work.map { $0.draw! }, logprobs: work.map(\.logprobs))
        else { return false }
        return Set(work.map { ObjectIdentifier($0.slot) }).count == work.count
    }

    /// The draws of the step after `work` (pipelinable), when each is known now and the backend
    /// queues them (with the same logprobs as this step's): an argmax after an argmax, else the
    /// work's `nextDraw` (whose penalties do not count this step's token yet: `pending` in `queueDraws`).
    private func nextDraws(_ work: [Work]) -> [TokenDraw]? {
        var draws: [TokenDraw] = []
        for item in work {
            if let next = item.nextDraw {
                draws.append(next)
            } else if item.draw?.isPlainArgmax == true {
                draws.append(.argmax)
            } else {
                return nil
            }
        }
        return model.backend.queuesDraws(draws, logprobs: work.map(\.logprobs)) ? draws : nil
    }

    /// Waits for the step queued ahead, if any, and forgets it (its rows' keys and values are at
    /// positions the slots do not count yet: later work writes them again); staging goes back to the
    /// whole area. Anything else that queues work first calls this.
    private func finishAhead() {
        guard model.backend.pipelinesSteps else { return }
        if let queued = ahead {
            _ = model.backend.queuedTokens(rows: queued.rows.count, place: queued.place)
            ahead = nil
        }
        model.backend.beginPipelinedStep(place: nil)
    }

    /// Queues one step for `slots` at their current positions: its inputs `tokens`, or (with `drawn`)
    /// rows drawn[i] of the last queued draws; its tokens chosen as `draws` says, with the logprobs
    /// `logprobs` asks for, and read back to `place`. A step queued ahead (`drawn`) goes to the
    /// device whole, as one graph: the device is busy with the step before meanwhile, so handing it
    /// over in pieces (to start sooner) only adds their seams (1B on an H100: 1.36 ms a step whole,
    /// 1.41 ms in pieces).
    private func queueStep(
        _ slots: [Slot], tokens: [Int], drawn: [Int]?, draws: [TokenDraw], logprobs: [Int?], place: Int
    ) {
        let model = drawn == nil ? model : wholeStepModel
        // Caches grown first: growing waits for the device, which must not come after the place's staging.
        for slot in slots {
            slot.cache.reserve(positions: slot.tokenCount + 1, kept: slot.tokenCount)
            slot.written = max(slot.written, slot.tokenCount + 1)
        }
        model.backend.beginPipelinedStep(place: place)
        let segments = slots.enumerated().map { i, slot in
            Gemma3Model<Backend>.Segment(cache: slot.cache, firstRow: i, count: 1, firstPosition: slot.tokenCount)
        }
        model.forward(tokens, segments: segments, scratch: stepScratch, drawn: drawn)
        // A step queued ahead: its rows' penalties do not count the tokens it takes (drawn).
        model.queueDraws(draws, logprobs: logprobs, pending: drawn, place: place, scratch: stepScratch)
    }

    /// A step of pipelinable work, with the next one queued before this one is read back, so that
    /// the device never waits for the host between steps. When the step queued ahead last time took
    /// this work's slots (all of them, or some whose sequences go on) with these tokens at these
    /// positions and draws, its rows are this work's (rows are computed alone: a decode row's numbers
    /// do not depend on the others, up to 16 rows on a GPU (its gemv kernels); a larger
    /// batch goes through cuBLAS, whose sums depend on the batch as any batch's do), and it is not
    /// queued again. Otherwise that step is dropped and this
    /// one is queued now. Either way the step after it is queued next for this work's slots, with
    /// the tokens this one chooses still on the device: for the rows whose sequences go on (not
    /// `isLast`, and room in the context), when each one's next draw is known (`nextDraws`), unless
    /// the caller's next step is other work (`queueAhead` false).
    private func pipelinedStep(_ work: [Work], queueAhead: Bool) throws -> [Output] {
        let slots = work.map(\.slot)
        let inputs = work.map { $0.tokens[0] }
        let draws = work.map { $0.draw! }
        let logprobs = work.map(\.logprobs)
        try check(inputs)
        for slot in slots where slot.tokenCount + 1 > slot.contextLength {
            throw InferenceError.contextOverflow(requested: slot.tokenCount + 1, limit: slot.contextLength)
        }
        var place: Int
        var rows: [Int] = []  // each work item's row in the step at `place`
        var stepRows = work.count
        if let (queued, found) = takenAhead(work) {
            place = queued.place
            rows = found
            stepRows = queued.rows.count
            stepsTakenAhead += 1
        } else {
            // The step queued ahead (if any) is dropped unread; the place rotation keeps its staging.
            place = takePlace()
            queueStep(slots, tokens: inputs, drawn: nil, draws: draws, logprobs: logprobs, place: place)
            rows = Array(0..<work.count)
        }
        ahead = nil
        for (slot, token) in zip(slots, inputs) { slot.tokens.append(token) }
        let goingOn = work.indices.filter {
            queueAhead && !work[$0].isLast && slots[$0].tokenCount + 1 <= slots[$0].contextLength
        }
        if !goingOn.isEmpty, let nextDraws = nextDraws(goingOn.map { work[$0] }) {
            let next = takePlace()
            let nextSlots = goingOn.map { slots[$0] }
            let nextLogprobs = goingOn.map { logprobs[$0] }
            ahead = Queued(
                rows: nextSlots.map { Queued.Row(slot: $0) }, generations: nextSlots.map(\.generation),
                positions: nextSlots.map(\.tokenCount), draws: nextDraws, logprobs: nextLogprobs, place: next)
            queueStep(
                nextSlots, tokens: [Int](repeating: 0, count: nextSlots.count), drawn: goingOn.map { rows[$0] }, draws: nextDraws,
                logprobs: nextLogprobs, place: next)
            ahead?.stamp = model.backend.pipelineStamp
        }
        let drawnTokens = model.backend.queuedTokens(rows: stepRows, place: place)
        let chosen = rows.map { drawnTokens[$0] }
        ahead?.inputs = goingOn.map { chosen[$0].id }
        return chosen.map { .token($0) }
    }

    /// Where each of `slots` is among the rows of `queued`, when every one is there with the same
    /// generation, at its current position, took `inputs`, was drawn as `draws` says (its
    /// penalties counting that input: `TokenDraw.accepting`) and scored as `logprobs` says; else nil.
    /// The queued step chose with the kernel a fresh step of these rows would (the argmax when
    /// every draw is a plain argmax and no logprobs are wanted, else the sampling kernels, which
    /// take the soft cap first).
    private static func rows(
        of slots: [Slot], inputs: [Int], draws: [TokenDraw], logprobs: [Int?], in queued: Queued
    ) -> [Int]? {
        let argmax = { (draws: [TokenDraw], logprobs: [Int?]) in
            draws.allSatisfy(\.isPlainArgmax) && logprobs.allSatisfy { $0 == nil }
        }
        guard queued.inputs.count == queued.rows.count, argmax(queued.draws, queued.logprobs) == argmax(draws, logprobs)
        else { return nil }
        var rows: [Int] = []
        for (i, slot) in slots.enumerated() {
            guard let row = queued.rows.firstIndex(where: { $0.slot === slot }), queued.generations[row] == slot.generation,
                queued.positions[row] == slot.tokenCount, queued.inputs[row] == inputs[i],
                queued.logprobs[row] == logprobs[i], queued.draws[row].accepting(inputs[i]).chooses(as: draws[i])
            else { return nil }
            rows.append(row)
        }
        return rows
    }

    /// `step`, where work with a `draw` gets its token instead of logits.
    /// `queueAhead` false: no step is queued after this one (the caller's next step is other work).
    public func outputs(_ work: [Work], queueAhead: Bool = true) throws -> [Output] {
        try outputs(work, pipelined: true, queueAhead: queueAhead)
    }

    /// Whether `outputs(work)` would take the step queued ahead: its tokens are on their way already.
    /// A scheduler about to start a prompt beside these rows takes it first (`queueAhead` false)
    /// rather than have the mixed step drop it.
    public func takesStepAhead(_ work: [Work]) -> Bool { pipelinable(work) && takenAhead(work) != nil }

    /// The step queued ahead and each work item's row in it, when it did this (pipelinable) work: no
    /// other argmax or draw since, and `rows(of:...)`.
    private func takenAhead(_ work: [Work]) -> (Queued, [Int])? {
        guard let queued = ahead, queued.stamp == model.backend.pipelineStamp,
            let rows = Self.rows(
                of: work.map(\.slot), inputs: work.map { $0.tokens[0] }, draws: work.map { $0.draw! },
                logprobs: work.map(\.logprobs), in: queued)
        else { return nil }
        return (queued, rows)
    }

    private func outputs(_ work: [Work], pipelined: Bool, queueAhead: Bool = true) throws -> [Output] {
        guard !work.isEmpty else { return [] }
        if pipelined && pipelinable(work) { return try pipelinedStep(work, queueAhead: queueAhead) }
        finishAhead()
        let rows = work.reduce(0) { $0 + $1.tokens.count }
        precondition(work.count <= maximumSequences && rows <= stepCapacity, "the step is larger than the runner's scratch")
        var tokens: [Int] = []
        tokens.reserveCapacity(rows)
        var segments: [Gemma3Model<Backend>.Segment] = []
        for item in work {
            guard !item.tokens.isEmpty else { throw InferenceError.invalidArgument("no tokens to process") }
            precondition(item.tokens.count <= prefillChunk, "a chunk is larger than the prefill chunk")
            try check(item.tokens)
            if let targets = item.scores?.targets {
                guard targets.count <= item.tokens.count else {
                    throw InferenceError.invalidArgument("more prompt tokens to score than the chunk has rows")
                }
                try check(targets)
            }
            let slot = item.slot
            guard slot.tokenCount + item.tokens.count <= slot.contextLength else {
                throw InferenceError.contextOverflow(requested: slot.tokenCount + item.tokens.count, limit: slot.contextLength)
            }
            slot.cache.reserve(positions: slot.tokenCount + item.tokens.count, kept: slot.tokenCount)
            segments.append(
                .init(cache: slot.cache, firstRow: tokens.count, count: item.tokens.count, firstPosition: slot.tokenCount))
            tokens += item.tokens
        }
        model.forward(tokens, segments: segments, scratch: stepScratch)
        for item in work { item.slot.tokens += item.tokens }
        var results = [Output](repeating: .logits([]), count: work.count)
        // Rows for the LM head: the last row of each item with a draw (its token only), the rows
        // that score prompt tokens (their logprobs only), then the last row of the others (its
        // logits). Each group of the scratch's logit rows is one LM head pass, in that order.
        var drawnRows: [(work: Int, row: Int, draw: TokenDraw, logprobs: Int?)] = []
        var scoredRows: [(work: Int, row: Int, target: Int)] = []
        var wanted: [(work: Int, row: Int)] = []
        for (i, (item, segment)) in zip(work, segments).enumerated() {
            let targets = item.scores?.targets ?? []
            for (k, target) in targets.enumerated() { scoredRows.append((i, segment.firstRow + k, target)) }
            if targets.count == segment.count {
                continue  // every row scored: no token or logits wanted after the chunk
            } else if let draw = item.draw {
                drawnRows.append((i, segment.firstRow + segment.count - 1, draw, item.logprobs))
            } else {
                wanted.append((i, segment.firstRow + segment.count - 1))
            }
        }
        var nextDrawn = 0, nextScored = 0, nextWanted = 0
        while nextDrawn < drawnRows.count || nextScored < scoredRows.count || nextWanted < wanted.count {
            let room = stepScratch.logitRows
            let drawn = drawnRows[nextDrawn..<min(drawnRows.count, nextDrawn + room)]
            let scored = scoredRows[nextScored..<min(scoredRows.count, nextScored + room - drawn.count)]
            let rest = wanted[nextWanted..<min(wanted.count, nextWanted + room - drawn.count - scored.count)]
            let top = scored.map { work[$0.work].scores!.top }.max() ?? 0
            let (tokens, scores, logits) = model.head(
                rows: drawn.map(\.row) + scored.map(\.row) + rest.map(\.row), draws: drawn.map(\.draw),
                logprobs: drawn.map(\.logprobs), targets: scored.map(\.target), top: top, scratch: stepScratch)
            for (entry, token) in zip(drawn, tokens) { results[entry.work] = .token(token) }
            for (entry, var token) in zip(scored, scores) {
                let wantedTop = work[entry.work].scores!
                token.top = Array(token.top.prefix(wantedTop.top))
                wantedTop.report(token)
            }
            for (entry, row) in zip(rest, logits) { results[entry.work] = .logits(row) }
            nextDrawn = drawn.endIndex
            nextScored = scored.endIndex
            nextWanted = rest.endIndex
        }
        return results
    }

    private func check(_ tokens: [Int]) throws {
        let vocabulary = model.config.vocabularySize
        if let bad = tokens.first(where: { $0 < 0 || $0 >= vocabulary }) {
            throw InferenceError.invalidArgument("token id \(bad) is outside the vocabulary (0..<\(vocabulary))")
        }
    }
}
