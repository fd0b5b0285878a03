/// One message of a conversation, in the shape chat templates receive (and OpenAI-style APIs send):
/// `{"role": "user", "content": "Hi"}` or `{"role": "user", "content": [{"type": "text", "text": "Hi"}]}`.
public struct ChatMessage: Sendable, Equatable, Codable {
    /// `system`, `user`, `assistant` (rendered as `model`), or any other role name.
    public var role: String
    public var content: Content

    /// A message's content, as Jinja sees it: a string (`is string`) or a list (`is iterable`).
    public enum Content: Sendable, Equatable {
        /// Rendered trimmed.
        case text(String)
        /// Each text part rendered trimmed, back to back with no separator.
        case parts([Part])
    }

    /// An element of list content.
    public enum Part: Sendable, Equatable {
        /// `{"type": "text", "text": ...}`.
        case text(String)
        /// `{"type": "image"}`: Gemma 3 renders `<start_of_image>`, which this module refuses for now.
        case image
        /// A part whose `type` the template does not know; the template renders nothing for it.
        case other(type: String)
    }

    /// A message with string content.
    public init(role: String, content: String) {
        self.role = role
        self.content = .text(content)
    }

    /// A message with list content.
    public init(role: String, parts: [Part]) {
        self.role = role
        self.content = .parts(parts)
    }

    private enum CodingKeys: String, CodingKey {
        case role, content
    }

    private enum PartKeys: String, CodingKey {
        case type, text
    }

    /// Accepts `content` as a string or as a list of `{type, ...}` objects; unknown part types are
    /// kept as `.other` so that rendering can ignore them like the template does.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        role = try container.decode(String.self, forKey: .role)
        if let text = try? container.decode(String.self, forKey: .content) {
            content = .text(text)
            return
        }
        // An assistant turn that only called tools has `"content": null` or none (OpenAI SDK
        // histories); as vLLM does, it renders as empty text. Other roles must say something.
        if role == "assistant", try !container.contains(.content) || container.decodeNil(forKey: .content) {
            content = .text("")
            return
        }
        var list = try container.nestedUnkeyedContainer(forKey: .content)
        var parts: [Part] = []
        while !list.isAtEnd {
            let part = try list.nestedContainer(keyedBy: PartKeys.self)
            let type = try part.decode(String.self, forKey: .type)
            switch type {
            // Jinja renders a missing `text` as the empty string.
            case "text": parts.append(.text(try part.decodeIfPresent(String.self, forKey: .text) ?? ""))
            case "image": parts.append(.image)
            default: parts.append(.other(type: type))
            }
        }
        content = .parts(parts)
    }

    /// Writes the same shapes `init(from:)` reads.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(role, forKey: .role)
        switch content {
        case .text(let text):
            try container.encode(text, forKey: .content)
        case .parts(let parts):
            var list = container.nestedUnkeyedContainer(forKey: .content)
            for part in parts {
                var element = list.nestedContainer(keyedBy: PartKeys.self)
                switch part {
                case .text(let text):
                    try element.encode("text", forKey: .type)
                    try element.encode(text, forKey: .text)
                case .image:
                    try element.encode("image", forKey: .type)
                case .other(let type):
                    try element.encode(type, forKey: .type)
                }
            }
        }
    }
}
