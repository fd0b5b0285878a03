import Foundation
import HTTP

/// Makes progress reporters for long transfers: a live line when stderr is a terminal, a plain
/// line every few seconds otherwise (what Cloud Build logs show), nothing when silent.
public struct ProgressFactory: Sendable {
    let enabled: Bool
    let isTTY: Bool
    let interval: Double

    public static let silent = ProgressFactory(enabled: false, isTTY: false, interval: 0)

    /// Reports on stderr; `interval` is the seconds between plain lines when not on a terminal.
    public static func standardError(interval: Double = 5) -> ProgressFactory {
        ProgressFactory(enabled: true, isTTY: isatty(2) == 1, interval: interval)
    }

    /// A warning on stderr, even when progress is silent: something the user may want to change.
    public func warn(_ text: String) {
        FileHandle.standardError.write(Data("builder: warning: \(text)\n".utf8))
    }

    /// A callback taking the bytes done so far; nil when silent.
    public func make(_ label: String, total: Int64?) -> ((Int64) -> Void)? {
        guard enabled else { return nil }
        let reporter = ProgressLine(label: label, total: total, isTTY: isTTY, interval: interval)
        return { reporter.update($0) }
    }
}

extension ProgressFactory {
    /// The shape the registry client takes: one reporter per blob.
    public var perBlob: (@Sendable (String, Int64) -> ((Int64) -> Void)?)? {
        guard enabled else { return nil }
        let factory = self
        return { label, total in factory.make(label, total: total) }
    }
}

final class ProgressLine: @unchecked Sendable {
    // @unchecked: a reporter is driven by the one thread that writes its layer.
    let label: String
    let total: Int64?
    let isTTY: Bool
    let interval: Double
    let start = DispatchTime.now()
    var lastPrint = DispatchTime.now()
    var finished = false

    init(label: String, total: Int64?, isTTY: Bool, interval: Double) {
        self.label = label
        self.total = total
        self.isTTY = isTTY
        self.interval = interval
    }

    func update(_ done: Int64) {
        let now = DispatchTime.now()
        let sinceLast = Double(now.uptimeNanoseconds - lastPrint.uptimeNanoseconds) / 1e9
        let complete = total.map { done >= $0 } ?? false
        guard !finished, complete || sinceLast >= (isTTY ? 0.2 : interval) else { return }
        lastPrint = now
        let elapsed = max(Double(now.uptimeNanoseconds - start.uptimeNanoseconds) / 1e9, 1e-3)
        let rate = Double(done) / elapsed
        var line = "\(label): \(ByteCount.format(done))"
        if let total {
            line += " / \(ByteCount.format(total))"
            if !complete, rate > 0 { line += ", ETA \(Int((Double(total - done) / rate).rounded(.up)))s" }
        }
        line += ", \(ByteCount.format(Int64(rate)))/s"
        if complete { finished = true }
        let text = isTTY ? "\r\u{1B}[K" + line + (complete ? "\n" : "") : line + "\n"
        FileHandle.standardError.write(Data(text.utf8))
    }
}
