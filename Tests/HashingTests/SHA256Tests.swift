import Hashing
import Testing

@Suite struct SHA256Tests {
    @Test func knownVectors() {
        // FIPS 180-2 appendix B test vectors.
        #expect(SHA256.hash(Array("abc".utf8)).hexString == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hash([UInt8]()).hexString == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let h = SHA256()
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
        for _ in 0..<1000 { h.update(chunk) }
        #expect(h.finalize().hexString == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func concurrentHasherMatchesSequentialOverManyBlocks() {
        var generator = SystemRandomNumberGenerator()
        let blocks = (0..<37).map { i in (0..<(i * 977 + 1)).map { _ in UInt8.random(in: 0...255, using: &generator) } }
        let sequential = SHA256()
        blocks.forEach { sequential.update($0) }
        let concurrent = ConcurrentHasher()
        for block in blocks {
            block.withUnsafeBytes { buffer in
                concurrent.begin(buffer)
                concurrent.wait()
            }
        }
        #expect(concurrent.finalize()[0] == sequential.finalize())
    }
}
