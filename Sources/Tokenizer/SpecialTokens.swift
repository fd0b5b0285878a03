/// Ids of the tokens an inference server needs, resolved against the vocabulary.
public struct SpecialTokens: Sendable, Equatable {
    /// From the config's token names, else the Gemma names `<bos>`, `<eos>`, `<pad>`, `<unk>`;
    /// nil only when the vocabulary has no such token.
    public let bos: Int?
    public let eos: Int?
    public let pad: Int?
    public let unk: Int?
    /// `<start_of_turn>` and `<end_of_turn>`, which frame every chat turn in Gemma 3.
    public let startOfTurn: Int?
    public let endOfTurn: Int?
    /// Whether `encode(_:addSpecialTokens: true)` prepends `bos` / appends `eos`.
    public let addsBos: Bool
    public let addsEos: Bool

    /// Normally built by `Tokenizer`; public so callers can construct expectations.
    public init(
        bos: Int?, eos: Int?, pad: Int?, unk: Int?, startOfTurn: Int?, endOfTurn: Int?, addsBos: Bool, addsEos: Bool
    ) {
        self.bos = bos
        self.eos = eos
        self.pad = pad
        self.unk = unk
        self.startOfTurn = startOfTurn
        self.endOfTurn = endOfTurn
        self.addsBos = addsBos
        self.addsEos = addsEos
    }

    /// Ids that end generation: Gemma 3 instruction models stop on `<eos>` and on `<end_of_turn>`
    /// (its generation_config.json lists both).
    public var stopTokenIDs: [Int] {
        var ids: [Int] = []
        for id in [eos, endOfTurn].compactMap({ $0 }) where !ids.contains(id) { ids.append(id) }
        return ids
    }
}
