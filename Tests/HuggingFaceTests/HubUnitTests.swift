import Foundation
import Testing
import TestSupport

@testable import HuggingFace

@Suite struct HubUnitTests {
    @Test func globMatchesLikeFnmatch() {
        #expect(glob("*.safetensors", "model-00001-of-00002.safetensors"))
        #expect(glob("*.safetensors", "sub/dir/x.safetensors"), "fnmatch's * crosses /")
        #expect(glob("original/*", "original/params.json"))
        #expect(!glob("config.json", "sub/config.json"))
        #expect(glob("model-0000[1-2]-*", "model-00002-of-00002.safetensors"))
        #expect(glob("?.txt", "a.txt") && !glob("?.txt", "ab.txt"))
    }

    @Test func defaultSelectionTakesWhatTheServerNeeds() {
        let paths = [
            "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
            "special_tokens_map.json", "model.safetensors", "original/model.safetensors", "pytorch_model.bin", "README.md",
            "model.gguf", ".gitattributes",
        ]
        let chosen = FileSelection().select(paths)
        #expect(chosen == ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "model.safetensors"])
        #expect(FileSelection().select(["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"], "*.bin when no safetensors")
        #expect(FileSelection(include: ["*.gguf"]).select(paths) == ["model.gguf"])
        #expect(FileSelection(exclude: ["tokenizer.model"]).select(paths).contains("tokenizer.model") == false)
    }

    @Test func tokenOrderAndCleaning() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("token-file", Array("hf_fromfile\r\n".utf8))
        let home = try dir.write("hfhome/token", Array("hf_fromhome\n".utf8))
        _ = home
        var env = ["HOME": dir.path, "HF_HOME": dir.path + "/hfhome", "HF_TOKEN": "hf_env", "HUGGING_FACE_HUB_TOKEN": "hf_legacy"]
        #expect(try HubConfiguration.resolve(environment: env, tokenFile: file).token == "hf_fromfile")
        #expect(try HubConfiguration.resolve(environment: env).token == "hf_env")
        env["HF_TOKEN"] = "  "
        #expect(try HubConfiguration.resolve(environment: env).token == "hf_legacy", "a blank token counts as none")
        env["HUGGING_FACE_HUB_TOKEN"] = nil
        #expect(try HubConfiguration.resolve(environment: env).token == "hf_fromhome")
        let config = try HubConfiguration.resolve(environment: ["HOME": "/h", "HF_HUB_OFFLINE": "yes", "HF_ENDPOINT": "http://x:1/"])
        #expect(config.offline && config.endpoint == "http://x:1" && config.cacheDirectory == "/h/.cache/huggingface/hub")
        #expect(throws: HubError.self) { try HubConfiguration.resolve(environment: env, tokenFile: dir.path + "/none") }
    }

    @Test func unsafePathsAreRefused() {
        for bad in ["../x", "a/../../b", "/etc/passwd", "a//b", "", "a\\b"] {
            #expect(throws: HubError.unsafePath(bad)) { try HubCache.validate(bad) }
        }
        #expect(throws: Never.self) { try HubCache.validate("sub/dir/file.json") }
    }

    @Test func cacheLayoutMatchesHuggingfaceHub() throws {
        let dir = try TemporaryDirectory()
        let cache = HubCache(root: dir.path, repo: "google/gemma-3-1b-it")
        #expect(cache.repoFolderName == "models--google--gemma-3-1b-it")
        let commit = String(repeating: "a", count: 40)
        try cache.writeRef("main", commit: commit)
        #expect(try Data(contentsOf: URL(fileURLWithPath: cache.repoFolder + "/refs/main")) == Data(commit.utf8), "no newline")
        #expect(cache.commit(for: "main") == commit)
        try cache.link(commit: commit, path: "sub/dir/x.json", etag: "e1")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: cache.snapshotPath(commit, "sub/dir/x.json")) == "../../../../blobs/e1")
        #expect(cache.lockPath("e1") == dir.path + "/.locks/models--google--gemma-3-1b-it/e1.lock")
    }

    @Test func linkHeaderParsing() {
        #expect(HubClient.nextLink(#"<https://hub/api/models/a/b/tree/main?cursor=xyz>; rel="next""#) == "https://hub/api/models/a/b/tree/main?cursor=xyz")
        #expect(HubClient.nextLink(#"<https://x>; rel="prev""#) == nil)
    }

    @Test func partPlansResumeWhatIsThere() throws {
        let dir = try TemporaryDirectory()
        let partial = try dir.write("blob.incomplete", randomBytes(1000))
        // No record: written front to back (huggingface_hub's way), so its size is what is done.
        let plan = PartPlan.load(partial: partial, size: 5000, pieces: 4)
        #expect(plan.parts.count == 1 && plan.parts[0].done == 1000)
        let fresh = PartPlan.load(partial: dir.path + "/none", size: 10, pieces: 4)
        #expect(fresh.parts.map(\.start) == [0, 3, 6, 9] && fresh.parts.last?.end == 10)
        #expect(PartPlan.load(partial: dir.path + "/none", size: 0, pieces: 4).parts.count == 1)
    }
}
