/// Which files of a repository to fetch: fnmatch-style globs as huggingface_hub's
/// `allow_patterns`/`ignore_patterns` take them (`*` also crosses `/`, as fnmatch does).
public struct FileSelection: Sendable {
    public var include: [String]
    public var exclude: [String]

    /// What the server needs to serve a model (vLLM's and transformers' file sets, the reference's
    /// section 5): config, generation config, tokenizer files, chat template, safetensors and index.
    public static let defaultInclude = [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
        "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
        "preprocessor_config.json", "*.safetensors", "model.safetensors.index.json",
    ]
    public static let defaultExclude = ["original/*"]

    public init(include: [String] = [], exclude: [String] = []) {
        self.include = include
        self.exclude = exclude
    }

    /// The paths to fetch. With no `--include`, the default set; `*.bin`/`*.pt` only when asked
    /// for or when the repository has no safetensors; GGUF only when asked for.
    public func select(_ paths: [String]) -> [String] {
        if !include.isEmpty {
            return paths.filter { p in include.contains { glob($0, p) } && !exclude.contains { glob($0, p) } }
        }
        var patterns = FileSelection.defaultInclude
        if !paths.contains(where: { $0.hasSuffix(".safetensors") }) {
            patterns += ["*.bin", "*.pt", "pytorch_model.bin.index.json"]
        }
        let excluded = FileSelection.defaultExclude + exclude
        return paths.filter { p in patterns.contains { glob($0, p) } && !excluded.contains { glob($0, p) } }
    }
}

/// fnmatch: `*` any run (including `/`), `?` one character, `[...]` a set; case-sensitive.
func glob(_ pattern: String, _ text: String) -> Bool {
    let p = Array(pattern.unicodeScalars), t = Array(text.unicodeScalars)
    var pi = 0, ti = 0, star = -1, mark = 0
    func matchSet(_ c: Unicode.Scalar, _ start: Int) -> (Bool, Int)? {
        var i = start + 1
        var negate = false
        if i < p.count, p[i] == "!" || p[i] == "^" { negate = true; i += 1 }
        var matched = false
        var first = true
        while i < p.count, p[i] != "]" || first {
            first = false
            if i + 2 < p.count, p[i + 1] == "-", p[i + 2] != "]" {
                if p[i] <= c && c <= p[i + 2] { matched = true }
                i += 3
            } else {
                if p[i] == c { matched = true }
                i += 1
            }
        }
        guard i < p.count else { return nil }  // no closing bracket: treat '[' literally
        return (matched != negate, i + 1)
    }
    while ti < t.count {
        if pi < p.count, p[pi] == "*" {
            star = pi
            mark = ti
            pi += 1
            continue
        }
        if pi < p.count {
            if p[pi] == "?" {
                pi += 1; ti += 1; continue
            }
            if p[pi] == "[", let (ok, next) = matchSet(t[ti], pi) {
                if ok { pi = next; ti += 1; continue }
            } else if p[pi] == t[ti] {
                pi += 1; ti += 1; continue
            }
        }
        guard star >= 0 else { return false }
        pi = star + 1
        mark += 1
        ti = mark
    }
    while pi < p.count, p[pi] == "*" { pi += 1 }
    return pi == p.count
}
