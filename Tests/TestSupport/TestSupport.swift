import Foundation
import Hashing

/// A fresh temporary folder, removed when the test is done with it.
public final class TemporaryDirectory {
    public let path: String

    public init() throws {
        path = NSTemporaryDirectory() + "oci-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    public func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let file = path + "/" + name
        try FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        return file
    }
}

public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs a real tool (python3, zstd, umoci, ...) and captures its output; `arguments[0]` is looked up in PATH.
@discardableResult
public func run(_ arguments: [String], input: String? = nil) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    // stderr goes to a file, not a second pipe: a child that fills one pipe while we drain the
    // other would block forever.
    let errorPath = NSTemporaryDirectory() + "run-stderr-" + UUID().uuidString
    FileManager.default.createFile(atPath: errorPath, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: errorPath) }
    let errorFile = try FileHandle(forWritingTo: URL(fileURLWithPath: errorPath))
    let out = Pipe(), inp = Pipe()
    process.standardOutput = out
    process.standardError = errorFile
    process.standardInput = inp
    try process.run()
    try errorFile.close()
    if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
    try inp.fileHandleForWriting.close()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let stderr = FileManager.default.contents(atPath: errorPath) ?? Data()
    return CommandResult(
        status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
        stderr: String(decoding: stderr, as: UTF8.self))
}

public func randomBytes(_ count: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &g) }
}

/// Reads a tar with Python's tarfile (an independent implementation) and describes every member.
private let inspectTar = #"""
import hashlib, json, sys, tarfile
out = []
with tarfile.open(sys.argv[1], "r:*") as t:
    for m in t.getmembers():
        d = {"name": m.name, "type": m.type.decode(), "mode": m.mode, "uid": m.uid, "gid": m.gid,
             "uname": m.uname, "gname": m.gname, "mtime": m.mtime, "size": m.size,
             "linkname": m.linkname, "pax": sorted(m.pax_headers.keys())}
        if m.isfile() and m.size < 100_000_000:
            d["sha256"] = hashlib.sha256(t.extractfile(m).read()).hexdigest()
        out.append(d)
print(json.dumps(out))
"""#

public struct TarMember: Decodable, Sendable {
    public var name: String
    public var type: String
    public var mode: Int
    public var uid: Int
    public var gid: Int
    public var uname: String
    public var gname: String
    public var mtime: Int
    public var size: Int64
    public var linkname: String
    public var pax: [String]
    public var sha256: String?
}

public func readTar(_ path: String) throws -> [TarMember] {
    let result = try run(["python3", "-c", inspectTar, path])
    guard result.status == 0 else { throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey: result.stderr]) }
    return try JSONDecoder().decode([TarMember].self, from: Data(result.stdout.utf8))
}

public func fileSHA256(_ path: String) throws -> String {
    SHA256.hash(try Data(contentsOf: URL(fileURLWithPath: path))).hexString
}

public enum FileSystemSize {
    public static func of(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int) ?? -1
    }
}

/// Deterministic pseudo-random numbers for reproducible test data.
public struct TestRandom: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func floats(_ count: Int, scale: Float = 1) -> [Float] {
        (0..<count).map { _ in Float.random(in: -scale...scale, using: &self) }
    }
    public mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) } }
}
