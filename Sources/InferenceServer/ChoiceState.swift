import Foundation
import Inference
import Tokenizer

/// One choice of a response as its events arrive: the text released so far (never half a
/// character, never the start of a stop string), the tokens it counts, and how it ended.
struct ChoiceState {
    let index: Int
    let promptIndex: Int
    let handle: SequenceHandle
    private var stream: TextStream
    /// The user's stop_token_ids: a stop on one of them is reported as stop_reason (vLLM).
    private let userStopTokens: Set<Int>
    /// Every token that ends the sequence: it counts as output but its text is left out (vLLM).
    private let stopTokens: Set<Int>
    /// `include_stop_str_in_output`: the matched stop string ends the text instead of being cut.
    private let includeStopString: Bool
    /// `min_tokens`: stop strings count only once the output is longer than this (vLLM V1's
    /// detokenizer checks them when the output has more than min_tokens tokens).
    private let minTokens: Int
    private(set) var tokens: [GeneratedToken] = []
    private(set) var text = ""
    private(set) var promptLogprobs: [GeneratedToken?]?
    private(set) var finish: FinishReason?
    private(set) var stopReason: JSON = .null
    private(set) var failure: String?

    var isDone: Bool { finish != nil || failure != nil }

    /// What one event added: text and tokens to report now.
    struct Update {
        var text = ""
        var tokens: [GeneratedToken] = []
        var finished = false
    }

    init(
        index: Int, promptIndex: Int, handle: SequenceHandle, tokenizer: Tokenizer, stop: [String],
        skipSpecialTokens: Bool, userStopTokens: Set<Int>, stopTokens: Set<Int>, includeStopString: Bool = false,
        minTokens: Int = 0
    ) {
        self.stopTokens = stopTokens
        self.includeStopString = includeStopString
        self.minTokens = minTokens
        self.index = index
        self.promptIndex = promptIndex
        self.handle = handle
        stream = TextStream(tokenizer: tokenizer, stopStrings: stop, skipSpecialTokens: skipSpecialTokens)
        self.userStopTokens = userStopTokens
    }

    mutating func apply(_ event: SequenceEvent) -> Update {
        var update = Update()
        guard !isDone else { return update }
        switch event {
        case .promptLogprobs(let entries):
            promptLogprobs = entries
        case .token(let token):
            tokens.append(token)
            update.tokens = [token]
            if stopTokens.contains(token.id) {
                // The engine stops here; `.finished` follows. The token's text is left out, unless
                // include_stop_str_in_output asks for it (vLLM).
                if includeStopString { update.text = stream.push(token.id) }
                break
            }
            stream.stopsActive = tokens.count > minTokens
            update.text = stream.push(token.id)
            if let stop = stream.matchedStop {
                // A stop string: the text ends before it, and the engine can stop now.
                finish = .stop
                stopReason = .string(stop)
                if includeStopString { update.text += stop }
                handle.finishEarly()
                update.finished = true
            }
        case .finished(let reason):
            update.text = stream.finish()
            finish = reason
            if reason == .stop, let last = tokens.last, userStopTokens.contains(last.id) {
                stopReason = .int(last.id)
            }
            update.finished = true
        case .failed(let message):
            failure = message
            update.finished = true
        }
        text += update.text
        return update
    }

    /// Marks the choice as ended by its event stream closing without a final event (shutdown).
    mutating func closed() {
        if !isDone { failure = "generation was stopped before it finished" }
    }
}

/// The events of several sequences as one stream of (choice index, event), in arrival order.
/// Ending the consumer cancels every sequence.
func mergedEvents(_ handles: [SequenceHandle]) -> AsyncStream<(Int, SequenceEvent?)> {
    let (stream, continuation) = AsyncStream<(Int, SequenceEvent?)>.makeStream()
    let task = Task {
        await withTaskGroup(of: Void.self) { group in
            for (index, handle) in handles.enumerated() {
                group.addTask {
                    for await event in handle.events { continuation.yield((index, event)) }
                    continuation.yield((index, nil))  // this sequence's events ended
                }
            }
        }
        continuation.finish()
    }
    continuation.onTermination = { _ in
        task.cancel()
        for handle in handles { handle.cancel() }
    }
    return stream
}
