/// The `decoder` of tokenizer.json: token strings back to text.
///
/// Gemma 3 declares `Sequence[Replace("▁" -> " "), ByteFallback, Fuse]`. The library runs each step
/// over the whole token list: `Replace` maps every token, `ByteFallback` turns each run of `<0xNN>`
/// tokens into its UTF-8 text (or, if the run is not valid UTF-8, one U+FFFD per byte token), and
/// `Fuse` concatenates. Since every step before `Fuse` is per token except the byte-run grouping,
/// decoding is a left-to-right fold, which lets `decode` and `StreamingDecoder` share `State` and
/// agree by construction.
struct DecoderPipeline: Sendable {
    /// A `Replace` decoder step: literal, per token, left to right without overlaps.
    struct Replacement: Sendable {
        let pattern: [UInt8]
        let content: [UInt8]
    }

    /// `Replace` steps before `ByteFallback` (all of them when there is none).
    let beforeByteFallback: [Replacement]
    let byteFallback: Bool
    /// `Replace` steps after `ByteFallback`, applied to every element it outputs.
    let afterByteFallback: [Replacement]
    /// Without a decoder the library joins tokens with a space.
    let separator: [UInt8]

    static let supportedTypes = ["Sequence", "Replace", "ByteFallback", "Fuse"]

    init(json: JSONFields?) throws {
        guard let json else {
            beforeByteFallback = []
            byteFallback = false
            afterByteFallback = []
            separator = [UInt8(ascii: " ")]
            return
        }
        // Flatten nested `Sequence`s, then check the order is one the fold below can reproduce.
        var steps: [(name: String, replacement: Replacement?)] = []
        try Self.collect(json, into: &steps)
        var before: [Replacement] = []
        var after: [Replacement] = []
        var sawByteFallback = false
        var sawFuse = false
        for step in steps {
            // `Fuse` leaves one string; steps after it would see the whole text, not tokens.
            if sawFuse {
                throw TokenizerError.unsupportedOption(
                    component: "decoder", option: "step after Fuse", value: step.name)
            }
            switch step.name {
            case "Fuse":
                sawFuse = true
            case "ByteFallback":
                if sawByteFallback {
                    throw TokenizerError.unsupportedOption(
                        component: "decoder", option: "ByteFallback", value: "repeated")
                }
                sawByteFallback = true
            default:
                if let replacement = step.replacement {
                    if sawByteFallback { after.append(replacement) } else { before.append(replacement) }
                }
            }
        }
        beforeByteFallback = before
        byteFallback = sawByteFallback
        afterByteFallback = after
        separator = []
    }

    private static func collect(_ json: JSONFields, into steps: inout [(name: String, replacement: Replacement?)])
        throws
    {
        let type = try json.string("type")
        switch type {
        case "Sequence":
            for (index, element) in try json.array("decoders").enumerated() {
                try collect(try json.element(element, of: "decoders", at: index), into: &steps)
            }
        case "Replace":
            let (pattern, content) = try StringPattern.replaceArguments(json, component: "decoder")
            steps.append((type, Replacement(pattern: pattern, content: content)))
        case "ByteFallback", "Fuse":
            steps.append((type, nil))
        default:
            throw TokenizerError.unsupportedComponent(component: "decoder", type: type, supported: supportedTypes)
        }
    }

    /// The byte a `<0xNN>` token stands for: six bytes, `<0x`, `>`, and two characters that
    /// `u8::from_str_radix(_, 16)` accepts (which includes a leading `+`).
    static func fallbackByte(_ token: [UInt8]) -> UInt8? {
        guard token.count == 6, token[0] == UInt8(ascii: "<"), token[1] == UInt8(ascii: "0"),
            token[2] == UInt8(ascii: "x"), token[5] == UInt8(ascii: ">")
        else { return nil }
        if token[3] == UInt8(ascii: "+") { return hexValue(token[4]) }
        guard let high = hexValue(token[3]), let low = hexValue(token[4]) else { return nil }
        return high << 4 | low
    }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Runs `Replace` steps over one element, in declaration order.
    private static func apply(_ steps: [Replacement], to token: ArraySlice<UInt8>) -> [UInt8] {
        var current = Array(token)
        for step in steps { current = UTF8Bytes.replacing(step.pattern, with: step.content, in: current[...]) }
        return current
    }

    /// Decoding progress: the pending byte-token run, which only resolves when the run ends.
    struct State: Sendable {
        /// Bytes of the current `<0xNN>` run and how many tokens produced them.
        var pendingBytes: [UInt8] = []
        var pendingTokens = 0
        /// Whether an element was emitted, so the no-decoder separator goes only between elements.
        var emittedAny = false

        /// Feeds one token's text; appends whatever text is now final to `output`.
        mutating func push(_ token: ArraySlice<UInt8>, _ pipeline: DecoderPipeline, into output: inout [UInt8]) {
            let mapped = DecoderPipeline.apply(pipeline.beforeByteFallback, to: token)
            if pipeline.byteFallback, let byte = DecoderPipeline.fallbackByte(mapped) {
                pendingBytes.append(byte)
                pendingTokens += 1
                return
            }
            flush(pipeline, into: &output)
            emit(mapped[...], pipeline, into: &output)
        }

        /// Resolves a pending byte run: its UTF-8 text, or one U+FFFD per byte token if invalid.
        mutating func flush(_ pipeline: DecoderPipeline, into output: inout [UInt8]) {
            guard pendingTokens > 0 else { return }
            if UTF8Bytes.isValid(pendingBytes) {
                emit(pendingBytes[...], pipeline, into: &output)
            } else {
                for _ in 0..<pendingTokens { emit(UTF8Bytes.replacementCharacter[...], pipeline, into: &output) }
            }
            pendingBytes.removeAll(keepingCapacity: true)
            pendingTokens = 0
        }

        /// One output element of the library's token list: joined with the separator, after the
        /// post-ByteFallback replacements.
        private mutating func emit(
            _ element: ArraySlice<UInt8>, _ pipeline: DecoderPipeline, into output: inout [UInt8]
        ) {
            if emittedAny { output.append(contentsOf: pipeline.separator) }
            emittedAny = true
            output.append(contentsOf: DecoderPipeline.apply(pipeline.afterByteFallback, to: element))
        }
    }
}
