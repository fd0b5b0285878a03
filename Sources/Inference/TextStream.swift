import Foundation
import Tokenizer

/// Generated token ids to text for streaming: never half a UTF-8 character (the tokenizer's
/// `StreamingDecoder`), and never text that might be the start of a stop string until the next tokens
/// show it is not. When a stop string appears, the text before it is the last text emitted (vLLM's
/// `stop`: the stop string itself is not part of the output).
public struct TextStream: Sendable {
    public let stopStrings: [String]
    private var decoder: StreamingDecoder
    /// Decoded text not yet emitted because it may begin a stop string.
    private var held = ""
    /// All text emitted so far.
    public private(set) var text = ""
    /// The stop string that ended the stream, if one did.
    public private(set) var matchedStop: String?
    /// While false, stop strings are not looked for (`min_tokens`: vLLM checks them only once the
    /// output is long enough). Text that may begin one is still held back, so that a stop string
    /// ending after the switch is found even when it began before it (vLLM looks back that far).
    public var stopsActive = true

    public init(tokenizer: Tokenizer, stopStrings: [String] = [], skipSpecialTokens: Bool = true) {
        self.stopStrings = stopStrings.filter { !$0.isEmpty }
        decoder = tokenizer.streamingDecoder(skipSpecialTokens: skipSpecialTokens)
    }

    public var stopped: Bool { matchedStop != nil }

    /// Feeds one generated token; returns the text that can be shown now (possibly empty).
    public mutating func push(_ id: Int) -> String {
        guard !stopped else { return "" }
        held += decoder.push(id)
        return release(final: false)
    }

    /// The end of generation: whatever is still held back.
    public mutating func finish() -> String {
        guard !stopped else { return "" }
        held += decoder.finish()
        return release(final: true)
    }

    private mutating func release(final: Bool) -> String {
        // The earliest stop string occurrence ends the stream.
        var earliest: (range: Range<String.Index>, stop: String)?
        for stop in stopStrings where stopsActive {
            if let range = held.range(of: stop), earliest.map({ range.lowerBound < $0.range.lowerBound }) ?? true {
                earliest = (range, stop)
            }
        }
        if let earliest {
            let out = String(held[..<earliest.range.lowerBound])
            text += out
            held = ""
            matchedStop = earliest.stop
            return out
        }
        var keep = 0
        if !final {
            // Hold back the longest tail that some stop string starts with.
            let characters = Array(held)
            let longest = min(characters.count, (stopStrings.map(\.count).max() ?? 1) - 1)
            for length in stride(from: longest, through: 1, by: -1) {
                let tail = String(characters[(characters.count - length)...])
                if stopStrings.contains(where: { $0.hasPrefix(tail) }) {
                    keep = length
                    break
                }
            }
        }
        let cut = held.index(held.endIndex, offsetBy: -keep)
        let out = String(held[..<cut])
        held = String(held[cut...])
        text += out
        return out
    }
}
