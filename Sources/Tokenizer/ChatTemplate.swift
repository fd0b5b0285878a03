/// The Gemma 3 chat template, hand-written to render exactly what transformers renders with the
/// Jinja `chat_template` of Gemma 3's tokenizer_config.json (kept verbatim in `gemma3Source`):
///
///     <bos><start_of_turn>user
///     {system}\n\n{user}<end_of_turn>
///     <start_of_turn>model
///     {assistant}<end_of_turn>
///     <start_of_turn>model
///
/// A leading `system` message is folded into the first turn, untrimmed, followed by a blank line;
/// turn contents are trimmed with Python's `str.strip()` (Jinja's `trim`); roles must alternate
/// starting with `user`; `assistant` is renamed `model`.
public struct ChatTemplate: Sendable {
    /// Written first, as `{{ bos_token }}`; encode the result without adding special tokens.
    public let bosToken: String

    public init(bosToken: String = "<bos>") {
        self.bosToken = bosToken
    }

    /// The template of the given config, which must be the Gemma 3 one this type implements.
    public init(config: TokenizerConfig) throws(TokenizerError) {
        guard let source = config.chatTemplate else {
            throw .unsupportedChatTemplate(reason: "tokenizer_config.json has no chat_template")
        }
        guard source.isIdentical(to: Self.gemma3Source) else {
            throw .unsupportedChatTemplate(
                reason: "tokenizer_config.json's chat_template differs from the Gemma 3 template implemented here")
        }
        self.init(bosToken: config.bosToken ?? "<bos>")
    }

    /// Renders with `<bos>` as the bos token.
    public static func render(messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        try ChatTemplate().render(messages, addGenerationPrompt: addGenerationPrompt)
    }

    /// The prompt text for `messages`; with `addGenerationPrompt`, it ends with `<start_of_turn>model\n`
    /// so the model writes the next assistant turn.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        guard let first = messages.first else {
            // `messages[0]['role']` is undefined in Jinja, which raises.
            throw TokenizerError.invalidConversation("there are no messages")
        }
        // The Jinja source, line by line: `{{ bos_token }}`, then the optional system prefix.
        var output = bosToken
        var firstUserPrefix = ""
        var loopMessages = messages[...]
        if first.role.isIdentical(to: "system") {
            switch first.content {
            case .text(let text):
                firstUserPrefix = text + "\n\n"
            case .parts(let parts):
                // The template reads `content[0]['text']` whatever the part's type.
                guard case .text(let text)? = parts.first else {
                    throw TokenizerError.invalidConversation(
                        "a system message given as a list must start with a text part")
                }
                firstUserPrefix = text + "\n\n"
            }
            loopMessages = messages.dropFirst()
        }
        // `loop.index0` counts from the first non-system message, so user turns sit at even indexes.
        for (index, message) in loopMessages.enumerated() {
            if message.role.isIdentical(to: "user") != (index % 2 == 0) {
                // The template's own message, then which message broke the rule.
                let position = index + messages.count - loopMessages.count
                throw TokenizerError.invalidConversation(
                    "Conversation roles must alternate user/assistant/user/assistant/... "
                        + "(message \(position) has role \(message.role.debugDescription))")
            }
            let role = message.role.isIdentical(to: "assistant") ? "model" : message.role
            output += "<start_of_turn>" + role + "\n" + (index == 0 ? firstUserPrefix : "")
            switch message.content {
            case .text(let text):
                output += Self.trim(text)
            case .parts(let parts):
                for part in parts {
                    switch part {
                    case .text(let text): output += Self.trim(text)
                    case .image: throw TokenizerError.unsupportedContent("image parts are not supported yet")
                    case .other: break
                    }
                }
            }
            output += "<end_of_turn>\n"
        }
        if addGenerationPrompt { output += "<start_of_turn>model\n" }
        return output
    }

    /// Python's `str.strip()`: removes the scalars `str.isspace()` accepts, which adds U+001C...U+001F
    /// to Unicode White_Space and works on scalars, not grapheme clusters.
    static func trim(_ text: String) -> String {
        let scalars = text.unicodeScalars
        guard let start = scalars.firstIndex(where: { !isPythonWhitespace($0) }) else { return "" }
        let end = scalars.lastIndex(where: { !isPythonWhitespace($0) })!
        return String(scalars[start...end])
    }

    static func isPythonWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default:
            return false
        }
    }

    /// The Jinja source this type reproduces, exactly as in Gemma 3's tokenizer_config.json.
    public static let gemma3Source = #"""
        {{ bos_token }}
        {%- if messages[0]['role'] == 'system' -%}
            {%- if messages[0]['content'] is string -%}
                {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
            {%- else -%}
                {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
            {%- endif -%}
            {%- set loop_messages = messages[1:] -%}
        {%- else -%}
            {%- set first_user_prefix = "" -%}
            {%- set loop_messages = messages -%}
        {%- endif -%}
        {%- for message in loop_messages -%}
            {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
                {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
            {%- endif -%}
            {%- if (message['role'] == 'assistant') -%}
                {%- set role = "model" -%}
            {%- else -%}
                {%- set role = message['role'] -%}
            {%- endif -%}
            {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
            {%- if message['content'] is string -%}
                {{ message['content'] | trim }}
            {%- elif message['content'] is iterable -%}
                {%- for item in message['content'] -%}
                    {%- if item['type'] == 'image' -%}
                        {{ '<start_of_image>' }}
                    {%- elif item['type'] == 'text' -%}
                        {{ item['text'] | trim }}
                    {%- endif -%}
                {%- endfor -%}
            {%- else -%}
                {{ raise_exception("Invalid content type") }}
            {%- endif -%}
            {{ '<end_of_turn>\n' }}
        {%- endfor -%}
        {%- if add_generation_prompt -%}
            {{'<start_of_turn>model\n'}}
        {%- endif -%}
        """#
}
