import Foundation
import Testing
import TestSupport

@testable import ELF

/// C sources compiled by the test with the toolchain's clang, so the ELF files have known contents.
private let mainSource = """
    int foo(void); int bar(void);
    #include <stdio.h>
    int main(void) { printf("%d %d\\n", foo(), bar()); return 0; }
    """

func compile(_ arguments: [String]) throws {
    let result = try run(["clang"] + arguments)
    #expect(result.status == 0, "clang failed: \(result.stderr)")
    if result.status != 0 { throw CocoaError(.executableLoad) }
}

@Suite struct ELFFileTests {
    @Test func readsInterpreterNeededAndRunpath() throws {
        let dir = try TemporaryDirectory()
        let foo = try dir.write("foo.c", Array("int foo(void) { return 1; }".utf8))
        let bar = try dir.write("bar.c", Array("int bar(void) { return 2; }".utf8))
        let main = try dir.write("main.c", Array(mainSource.utf8))
        try FileManager.default.createDirectory(atPath: dir.path + "/lib", withIntermediateDirectories: true)
        try compile(["-shared", "-fPIC", "-Wl,-soname,libfoo.so", "-o", dir.path + "/lib/libfoo.so", foo])
        try compile(["-shared", "-fPIC", "-o", dir.path + "/lib/libbar.so", bar])
        try compile([main, "-o", dir.path + "/main", "-L", dir.path + "/lib", "-lfoo", "-lbar", "-Wl,-rpath,$ORIGIN/lib"])

        let exe = try ELFFile(path: dir.path + "/main")
        #expect(exe.machine == .x86_64)
        #expect(exe.interpreter == "/lib64/ld-linux-x86-64.so.2")
        #expect(exe.needed.prefix(2) == ["libfoo.so", "libbar.so"])
        #expect(exe.needed.contains("libc.so.6"))
        #expect(exe.runpath == ["$ORIGIN/lib"])
        let lib = try ELFFile(path: dir.path + "/lib/libfoo.so")
        #expect(lib.soname == "libfoo.so")
        #expect(lib.interpreter == nil)
    }

    @Test func rejectsWhatIsNotAnELFObject() throws {
        let dir = try TemporaryDirectory()
        let script = try dir.write("server.sh", Array("#!/bin/sh\necho hi\n".utf8))
        #expect(throws: ELFError.notELF(path: script)) { try ELFFile(path: script) }
        let empty = try dir.write("empty", [])
        #expect(throws: ELFError.notELF(path: empty)) { try ELFFile(path: empty) }
        #expect { try ELFFile(path: dir.path + "/nope") } throws: { "\($0)".contains("nope") }

        var header = [UInt8](repeating: 0, count: 64)
        header[0...3] = [0x7f, 0x45, 0x4c, 0x46]
        header[4] = 1  // ELFCLASS32
        header[5] = 1
        let elf32 = try dir.write("elf32", header)
        #expect { try ELFFile(path: elf32) } throws: { "\($0)".contains("32-bit") }
    }

    /// Every truncation of a real executable is an error, never a crash or a hang.
    @Test func truncatedObjectsFailCleanly() throws {
        let dir = try TemporaryDirectory()
        let original = try Data(contentsOf: URL(fileURLWithPath: "/bin/true"))
        for length in [20, 63, 64, 100, 700, 4096, 8192] where length < original.count {
            let path = try dir.write("t\(length)", Array(original.prefix(length)))
            #expect(throws: ELFError.self) { try ELFFile(path: path) }
        }
    }
}

@Suite struct LibraryResolverTests {
    /// A fake root with a merged-/usr layout, an ld.so.conf include and an $ORIGIN runpath.
    @Test func resolvesLikeTheLoader() throws {
        let dir = try TemporaryDirectory()
        let root = dir.path + "/root"
        let fm = FileManager.default
        for d in ["usr/lib/x86_64-linux-gnu", "usr/lib64", "etc/ld.so.conf.d", "opt/custom/lib", "app/bin", "app/lib"] {
            try fm.createDirectory(atPath: root + "/" + d, withIntermediateDirectories: true)
        }
        try fm.createSymbolicLink(atPath: root + "/lib", withDestinationPath: "usr/lib")
        try fm.createSymbolicLink(atPath: root + "/lib64", withDestinationPath: "usr/lib64")
        for lib in ["libc.so.6", "ld-linux-x86-64.so.2"] {
            try fm.copyItem(atPath: "/lib/x86_64-linux-gnu/" + lib, toPath: root + "/usr/lib/x86_64-linux-gnu/" + lib)
        }
        try fm.createSymbolicLink(atPath: root + "/usr/lib64/ld-linux-x86-64.so.2", withDestinationPath: "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        _ = try dir.write("root/etc/ld.so.conf", Array("# comment\ninclude /etc/ld.so.conf.d/*.conf\n".utf8))
        _ = try dir.write("root/etc/ld.so.conf.d/custom.conf", Array("/opt/custom/lib   # ours\n".utf8))

        let foo = try dir.write("foo.c", Array("int foo(void) { return 1; }".utf8))
        let bar = try dir.write("bar.c", Array("int bar(void) { return 2; }".utf8))
        let main = try dir.write("main.c", Array(mainSource.utf8))
        try compile(["-shared", "-fPIC", "-o", root + "/app/lib/libfoo.so", foo])
        try compile(["-shared", "-fPIC", "-o", root + "/opt/custom/lib/libbar.so", bar])
        try compile([
            main, "-o", root + "/app/bin/main", "-L", root + "/app/lib", "-L", root + "/opt/custom/lib", "-lfoo", "-lbar",
            "-Wl,-rpath,$ORIGIN/../lib",
        ])

        let resolver = LibraryResolver(root: root)
        let result = try resolver.resolve(executable: root + "/app/bin/main", imagePath: "/srv/main")
        let images = result.libraries.map(\.imagePath)
        // libfoo follows $ORIGIN relative to where the server will be in the image, not on the host.
        #expect(images.contains("/lib/libfoo.so"))
        #expect(images.contains("/opt/custom/lib/libbar.so"))
        #expect(images.contains("/lib/x86_64-linux-gnu/libc.so.6"))
        #expect(images.contains("/lib64/ld-linux-x86-64.so.2"))
        #expect(!images.contains("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), "the loader is not loaded twice")
        #expect(result.extraSearchPath == ["/opt/custom/lib"])
        #expect(result.libraries.first { $0.imagePath == "/lib/libfoo.so" }?.hostPath == root + "/app/bin/../lib/libfoo.so")
    }

    @Test func aMissingLibrarySaysWhoNeedsItAndWhereItLooked() throws {
        let dir = try TemporaryDirectory()
        let lib = try dir.write("gone.c", Array("int gone(void) { return 1; }".utf8))
        let main = try dir.write("main.c", Array("int gone(void); int main(void) { return gone(); }".utf8))
        try compile(["-shared", "-fPIC", "-o", dir.path + "/libgone.so", lib])
        try compile([main, "-o", dir.path + "/main", "-L", dir.path, "-lgone"])
        try FileManager.default.removeItem(atPath: dir.path + "/libgone.so")
        #expect {
            _ = try LibraryResolver().resolve(executable: dir.path + "/main", imagePath: "/main")
        } throws: { error in
            guard case ELFError.libraryNotFound(let name, let neededBy, let searched) = error else { return false }
            return name == "libgone.so" && neededBy.hasSuffix("/main") && searched.contains("/usr/lib/x86_64-linux-gnu")
        }
    }

    @Test func pathHelpers() {
        #expect(normalize("/a/./b/../c//d") == "/a/c/d")
        #expect(expandOrigin("${ORIGIN}/../lib:$ORIGIN", origin: "/x") == "/x/../lib:/x")
    }
}
