import ArgumentParser
import BuilderKit
import Foundation
import GoogleCloud
import HuggingFace

struct FetchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download a model from the Hugging Face Hub into the local cache; prints the snapshot path.",
        discussion: """
            The cache is huggingface_hub's own ($HF_HUB_CACHE, or $HF_HOME/hub, or \
            ~/.cache/huggingface/hub), so Python, transformers and vLLM find what this fetched, and this \
            reuses what they fetched. Every file is checked (sha256 for LFS files, the git blob sha1 for \
            the others) before it is renamed into place; a killed fetch resumes where it stopped.

            Token, first found: --token-file, HF_TOKEN, HUGGING_FACE_HUB_TOKEN, the file at \
            HF_TOKEN_PATH, $HF_HOME/token. It is sent to the Hub endpoint only, never to the CDN a \
            download is redirected to, and never printed.

            Default files: config and generation config, tokenizer files, chat template, *.safetensors \
            and their index; *.bin/*.pt only when there are no safetensors; nothing under original/. \
            Use --include (repeatable) for GGUF files or anything else.

            Example:
              HF_TOKEN=$(cat token) builder fetch google/gemma-3-1b-it
            """
    )

    @Argument(help: "The repository and optional revision: ORG/NAME[@REVISION] (branch, tag or commit; default main).")
    var repository: String

    @Option(help: "Glob of files to take (fnmatch: * also crosses /); repeatable. Replaces the default set.")
    var include: [String] = []

    @Option(help: "Glob of files to leave out; repeatable.")
    var exclude: [String] = []

    @Option(help: "Files (and byte ranges of a large file) in flight at once.")
    var jobs: Int = 8

    @Option(help: "The Hub endpoint. Default: $HF_ENDPOINT or https://huggingface.co.")
    var endpoint: String?

    @Option(name: .customLong("token-file"), help: "A file holding the Hugging Face token.")
    var tokenFile: String?

    @Option(name: .customLong("cache-dir"), help: "The hub cache folder. Default: $HF_HUB_CACHE or $HF_HOME/hub.")
    var cacheDir: String?

    @Option(name: .customLong("hf-token-secret"), help: "Read the token from Secret Manager: projects/P/secrets/NAME[/versions/V] (Google credentials from the usual chain). Held in memory only.")
    var hfTokenSecret: String?

    @Flag(help: "Print no progress lines.")
    var quiet = false

    func validate() throws {
        guard jobs >= 1, jobs <= 64 else { throw ValidationError("--jobs must be between 1 and 64") }
        let repo = repository.split(separator: "@").first ?? ""
        guard repo.split(separator: "/").count == 2 else { throw ValidationError("the repository is ORG/NAME[@REVISION], e.g. google/gemma-3-1b-it") }
    }

    func run() throws {
        try reportingErrors {
            let parts = repository.split(separator: "@", maxSplits: 1).map(String.init)
            let secretToken = try hfTokenSecret.map { name -> String in
                let bytes = try SecretManager(credentials: GoogleCredentials.discover()).access(name)
                return String(decoding: bytes, as: UTF8.self)
            }
            let config = try HubConfiguration.resolve(endpoint: endpoint, tokenFile: tokenFile, cacheDirectory: cacheDir, token: secretToken)
            var fetcher = SnapshotFetcher(client: HubClient(configuration: config))
            fetcher.selection = FileSelection(include: include, exclude: exclude)
            fetcher.jobs = jobs
            let progress: ProgressFactory = quiet ? .silent : .standardError()
            fetcher.progress = progress.perBlob
            let result = try fetcher.fetch(repo: parts[0], revision: parts.count > 1 ? parts[1] : "main")
            if !quiet {
                FileHandle.standardError.write(Data("fetched \(parts[0])@\(result.commit): \(result.files.count) files, \(result.reused) reused from the cache, \(result.bytesFetched) bytes downloaded\n".utf8))
            }
            print(result.snapshot)
        }
    }
}
