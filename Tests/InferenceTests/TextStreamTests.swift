import Testing
import Tokenizer

@testable import Inference

@Suite(.serialized) struct TextStreamTests {
    func ids(_ tokenizer: Tokenizer, _ text: String) -> [Int] { tokenizer.encode(text, addSpecialTokens: false) }

    @Test func withoutStopStringsTheStreamIsTheDecodedText() throws {
        try RealWeights.require()
        let tokenizer = try RealWeights.tokenizer.get()
        let text = "Grüße, 世界! 🙂 The end."
        var stream = TextStream(tokenizer: tokenizer)
        var shown = ""
        for id in ids(tokenizer, text) { shown += stream.push(id) }
        shown += stream.finish()
        #expect(shown == text && stream.text == text && !stream.stopped)
    }

    @Test func aStopStringEndsTheTextBeforeIt() throws {
        try RealWeights.require()
        let tokenizer = try RealWeights.tokenizer.get()
        var stream = TextStream(tokenizer: tokenizer, stopStrings: ["\n\n", "END"])
        var shown = ""
        var pushed = 0
        for id in ids(tokenizer, "first line\nstill going, THE END is near\n\nnever shown") {
            shown += stream.push(id)
            pushed += 1
            if stream.stopped { break }
        }
        shown += stream.finish()
        #expect(stream.matchedStop == "END")
        #expect(shown == "first line\nstill going, THE ")
        #expect(stream.text == shown)
    }

    @Test func textThatMightStartAStopStringIsHeldBack() throws {
        try RealWeights.require()
        let tokenizer = try RealWeights.tokenizer.get()
        var stream = TextStream(tokenizer: tokenizer, stopStrings: ["Stop here"])
        var pieces: [String] = []
        for id in ids(tokenizer, "Go on. Stop") { pieces.append(stream.push(id)) }
        // "Stop" may begin "Stop here": not shown yet; the end of generation releases it.
        #expect(!pieces.joined().contains("Stop"))
        #expect(pieces.joined() + stream.finish() == "Go on. Stop")
        #expect(!stream.stopped)
    }
}
