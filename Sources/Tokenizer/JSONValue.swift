/// A parsed JSON document. Objects keep their key order, which the vocabulary does not need but
/// error messages and `added_tokens` processing do.
enum JSONValue: Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    /// An array of exactly two strings, kept without an array of its own (`arrayValue` gives it as one).
    case stringPair(String, String)
    case object(JSONObject)

    // The accessors below return nil on a type mismatch; `JSONFields` turns that into an error.

    var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// The value as an integer, only when it is a JSON number with no fractional part that fits.
    var intValue: Int? {
        guard case .number(let d) = self, d.rounded() == d, abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }

    var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        if case .stringPair(let a, let b) = self { return [.string(a), .string(b)] }
        return nil
    }

    var objectValue: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// serde treats `null` like an absent field for optional values; callers need to tell it apart.
    var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

/// A JSON object with its entries in document order.
struct JSONObject: Sendable {
    var entries: [(key: String, value: JSONValue)]

    /// The last entry with this key, as serde_json's map deserialisation keeps the last duplicate.
    subscript(key: String) -> JSONValue? {
        entries.last(where: { $0.key.isIdentical(to: key) })?.value
    }
}

/// Typed, path-aware access to an object's fields, so a wrong field names its file and JSON path.
struct JSONFields {
    let object: JSONObject
    let file: String
    let path: String

    init(_ object: JSONObject, file: String, path: String) {
        self.object = object
        self.file = file
        self.path = path
    }

    /// The dotted JSON path of a field, for error messages (`model.vocab`, `added_tokens[3].id`).
    func pathTo(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The field's value; absent and `null` both read as `nil`, as serde's `Option` does.
    func value(_ key: String) -> JSONValue? {
        guard let value = object[key], !value.isNull else { return nil }
        return value
    }

    /// The field's value, or `missingField` naming it.
    func require(_ key: String) throws -> JSONValue {
        guard let value = value(key) else { throw TokenizerError.missingField(file: file, path: pathTo(key)) }
        return value
    }

    /// The error for a field of the wrong shape; `expected` completes "must be ...".
    func invalid(_ key: String, _ expected: String) -> TokenizerError {
        .invalidField(file: file, path: pathTo(key), expected: expected)
    }

    func string(_ key: String) throws -> String {
        guard let s = try require(key).stringValue else { throw invalid(key, "a string") }
        return s
    }

    func optionalString(_ key: String) throws -> String? {
        guard let value = value(key) else { return nil }
        guard let s = value.stringValue else { throw invalid(key, "a string or null") }
        return s
    }

    /// Absent or null reads as the library's serde default for the field.
    func bool(_ key: String, default defaultValue: Bool) throws -> Bool {
        guard let value = value(key) else { return defaultValue }
        guard let b = value.boolValue else { throw invalid(key, "true or false") }
        return b
    }

    func optionalBool(_ key: String) throws -> Bool? {
        guard let value = value(key) else { return nil }
        guard let b = value.boolValue else { throw invalid(key, "true, false or null") }
        return b
    }

    func int(_ key: String) throws -> Int {
        guard let i = try require(key).intValue else { throw invalid(key, "an integer") }
        return i
    }

    func array(_ key: String) throws -> [JSONValue] {
        guard let a = try require(key).arrayValue else { throw invalid(key, "an array") }
        return a
    }

    func object(_ key: String) throws -> JSONFields {
        guard let o = try require(key).objectValue else { throw invalid(key, "an object") }
        return JSONFields(o, file: file, path: pathTo(key))
    }

    func optionalObject(_ key: String) throws -> JSONFields? {
        guard let value = value(key) else { return nil }
        guard let o = value.objectValue else { throw invalid(key, "an object or null") }
        return JSONFields(o, file: file, path: pathTo(key))
    }

    /// Wraps element `index` of an array field as an object.
    func element(_ value: JSONValue, of key: String, at index: Int) throws -> JSONFields {
        let elementPath = "\(pathTo(key))[\(index)]"
        guard let o = value.objectValue else {
            throw TokenizerError.invalidField(file: file, path: elementPath, expected: "an object")
        }
        return JSONFields(o, file: file, path: elementPath)
    }
}
