/// The `pre_tokenizer` of tokenizer.json: cuts normalized text into the words BPE sees separately.
///
/// Gemma 3 declares `Split` on `" "` with `MergedWithPrevious`. Because its normalizer has already
/// turned every space into `▁`, that split never fires and BPE sees whole lines; it is implemented
/// in full anyway so the output stays right if either component changes.
struct PreTokenizer: Sendable {
    /// `SplitDelimiterBehavior` of the library.
    enum Behavior: String, Sendable {
        case removed = "Removed"
        case isolated = "Isolated"
        case mergedWithPrevious = "MergedWithPrevious"
        case mergedWithNext = "MergedWithNext"
        case contiguous = "Contiguous"
    }

    /// One `Split` step: a literal pattern, what to do with the matches, and whether to invert them.
    struct Split: Sendable {
        let pattern: [UInt8]
        let behavior: Behavior
        let invert: Bool
    }

    let splits: [Split]

    static let supportedTypes = ["Split", "Sequence"]

    init(splits: [Split]) {
        self.splits = splits
    }

    init(json: JSONFields?) throws {
        guard let json else {
            self.init(splits: [])
            return
        }
        var steps: [Split] = []
        try Self.collect(json, into: &steps)
        self.init(splits: steps)
    }

    private static func collect(_ json: JSONFields, into steps: inout [Split]) throws {
        let type = try json.string("type")
        switch type {
        case "Sequence":
            for (index, element) in try json.array("pretokenizers").enumerated() {
                try collect(try json.element(element, of: "pretokenizers", at: index), into: &steps)
            }
        case "Split":
            let pattern = try StringPattern.literal(json, component: "pre_tokenizer Split")
            let name = try json.string("behavior")
            guard let behavior = Behavior(rawValue: name) else {
                throw TokenizerError.unsupportedOption(
                    component: "pre_tokenizer Split", option: "behavior", value: name)
            }
            steps.append(Split(pattern: pattern, behavior: behavior, invert: try json.bool("invert", default: false)))
        default:
            throw TokenizerError.unsupportedComponent(component: "pre_tokenizer", type: type, supported: supportedTypes)
        }
    }

    /// The words of `text` as ranges into it, empty ones dropped as `PreTokenizedString::split` does.
    /// Each step splits every piece the previous step produced (`Sequence` semantics).
    func words(in text: [UInt8]) -> [Range<Int>] {
        var pieces = text.isEmpty ? [] : [0..<text.count]
        for split in splits {
            var next: [Range<Int>] = []
            for piece in pieces {
                next.append(contentsOf: Self.apply(split, to: text[piece]))
            }
            pieces = next
        }
        return pieces
    }

    /// `NormalizedString::split` for one piece, following the library's fold for each behavior.
    private static func apply(_ split: Split, to text: ArraySlice<UInt8>) -> [Range<Int>] {
        // Alternating (range, isMatch) segments covering `text`, like `Pattern::find_matches`.
        var segments: [(range: Range<Int>, isMatch: Bool)] = []
        var cursor = text.startIndex
        for match in UTF8Bytes.occurrences(of: split.pattern, in: text) {
            if cursor < match.lowerBound { segments.append((cursor..<match.lowerBound, split.invert)) }
            segments.append((match, !split.invert))
            cursor = match.upperBound
        }
        if cursor < text.endIndex || segments.isEmpty { segments.append((cursor..<text.endIndex, split.invert)) }

        // The folds below are `SplitDelimiterBehavior`'s in the library, including its quirk that a
        // match following another match is never merged.
        var result: [Range<Int>] = []
        switch split.behavior {
        case .removed:
            result = segments.filter { !$0.isMatch }.map(\.range)
        case .isolated:
            result = segments.map(\.range)
        case .mergedWithPrevious:
            var previousMatch = false
            for segment in segments {
                if segment.isMatch && !previousMatch, let last = result.last {
                    result[result.count - 1] = last.lowerBound..<segment.range.upperBound
                } else {
                    result.append(segment.range)
                }
                previousMatch = segment.isMatch
            }
        case .mergedWithNext:
            var previousMatch = false
            for segment in segments.reversed() {
                if segment.isMatch && !previousMatch, let last = result.last {
                    result[result.count - 1] = segment.range.lowerBound..<last.upperBound
                } else {
                    result.append(segment.range)
                }
                previousMatch = segment.isMatch
            }
            result.reverse()
        case .contiguous:
            var previousMatch = false
            for segment in segments {
                if segment.isMatch == previousMatch, let last = result.last {
                    result[result.count - 1] = last.lowerBound..<segment.range.upperBound
                } else {
                    result.append(segment.range)
                }
                previousMatch = segment.isMatch
            }
        }
        return result.filter { !$0.isEmpty }
    }
}
