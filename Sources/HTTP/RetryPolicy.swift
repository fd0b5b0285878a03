import Foundation

/// Capped exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff and
/// Jitter"), honouring `Retry-After`. ggcr retries the same statuses: 408, 429, 5xx.
public struct RetryPolicy: Sendable {
    public var attempts: Int
    public var baseDelay: Double
    public var maxDelay: Double

    public init(attempts: Int = 6, baseDelay: Double = 0.5, maxDelay: Double = 10) {
        self.attempts = attempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    public static func isRetryable(status: Int) -> Bool {
        status == 408 || status == 429 || (500...599).contains(status)
    }

    func delay(attempt: Int, retryAfter: Double?) -> Double {
        if let retryAfter { return min(max(retryAfter, 0), 60) }
        let ceiling = min(maxDelay, baseDelay * pow(2, Double(attempt)))
        return Double.random(in: 0...ceiling)
    }
}

/// A failure worth another try: a dropped connection or a 408/429/5xx answer.
public struct TransientFailure: Error, CustomStringConvertible {
    public var description: String
    public var retryAfter: Double?

    public init(description: String, retryAfter: Double? = nil) {
        self.description = description
        self.retryAfter = retryAfter
    }
}

/// What `RetryPolicy.run` throws when every attempt failed transiently.
public struct RetriesExhausted: Error, CustomStringConvertible {
    public var step: String
    public var attempts: Int
    public var last: String

    public var description: String { "gave up \(step) after \(attempts) attempts; last error: \(last)" }
}

extension RetryPolicy {
    /// Runs `body` until it succeeds, fails for good, or runs out of attempts. Each attempt starts
    /// from scratch (a blob upload opens a new session), so a half-done attempt leaves nothing.
    public func run<T>(_ step: String, _ body: (Int) throws -> T) throws -> T {
        var last = ""
        for attempt in 0..<attempts {
            do {
                return try body(attempt)
            } catch let failure as TransientFailure {
                last = failure.description
                if attempt + 1 < attempts { Thread.sleep(forTimeInterval: delay(attempt: attempt, retryAfter: failure.retryAfter)) }
            }
        }
        throw RetriesExhausted(step: step, attempts: attempts, last: last)
    }
}
