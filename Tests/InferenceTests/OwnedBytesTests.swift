import Foundation
import Testing

@testable import Inference

/// The owned bytes packed weights live in: from the heap when small, from a huge-page-aligned mapping
/// when large; either way every byte is the caller's, and the copy initializer copies them all.
@Suite struct OwnedBytesTests {
    @Test(arguments: [1, 4096, (2 << 20) - 1, 2 << 20, (5 << 20) + 3])
    func everyByteIsWritableAndKept(_ count: Int) {
        let bytes = OwnedBytes(count: count)
        #expect(Int(bitPattern: bytes.pointer) % 64 == 0)
        if count >= 2 << 20 {
            #expect(Int(bitPattern: bytes.pointer) % (2 << 20) == 0, "large buffers start on a huge page")
        }
        let p = bytes.pointer.assumingMemoryBound(to: UInt8.self)
        for i in 0..<count { p[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        #expect((0..<count).allSatisfy { p[$0] == UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        let source = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let copy = OwnedBytes(source)
        #expect(UnsafeBufferPointer(start: copy.pointer.assumingMemoryBound(to: UInt8.self), count: count).elementsEqual(source))
    }
}
