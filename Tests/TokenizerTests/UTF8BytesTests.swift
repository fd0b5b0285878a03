import Foundation
import TestSupport
import Testing

@testable import Tokenizer

/// `UTF8Bytes.validPrefixLength` (which skips ASCII eight bytes at a time) against the standard
/// library's decoder: the same length of valid UTF-8 before the first bad sequence, wherever that
/// falls relative to the runs of ASCII.
@Suite struct UTF8BytesTests {
    /// Bytes up to the first that the standard decoder rejects (a sequence cut by the end counts as bad).
    static func reference(_ bytes: [UInt8]) -> Int {
        var iterator = bytes.makeIterator()
        var parser = Unicode.UTF8.ForwardParser()
        var valid = 0
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid(let encoded): valid += encoded.count
            case .emptyInput: return valid
            case .error: return valid
            }
        }
    }

    @Test func itAgreesWithTheStandardDecoder() {
        var generator = TestRandom(seed: 3)
        let pieces: [[UInt8]] = [
            Array("abcdefgh".utf8), Array("é".utf8), Array("ख़".utf8), Array("😀".utf8), [0x7B],
            [0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0xF4, 0x90, 0x80, 0x80], [0x80],
        ]
        for _ in 0..<3000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int(generator.next() % 12) {
                let index = Int(generator.next() % UInt64(pieces.count))
                // The bad pieces (from index 5) rarely, so the first one lands anywhere in a long valid prefix.
                if index >= 5 && generator.next() % 8 != 0 { continue }
                bytes += pieces[index]
                bytes += Array(repeating: UInt8(ascii: "x"), count: Int(generator.next() % 19))
            }
            let found = bytes.withUnsafeBufferPointer { UTF8Bytes.validPrefixLength($0) }
            #expect(found == Self.reference(bytes), "\(bytes)")
        }
        #expect([UInt8]().withUnsafeBufferPointer { UTF8Bytes.validPrefixLength($0) } == 0)
    }
}
