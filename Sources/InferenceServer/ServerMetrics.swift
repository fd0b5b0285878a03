import Foundation
import Inference

/// The server's Prometheus metrics, under vLLM's names where vLLM has one (gemma3-and-serving.md
/// §4.1), so dashboards and autoscalers written for vLLM read ours unchanged. Updated from the engine
/// thread and request tasks; rendered by `GET /metrics`.
public final class ServerMetrics: @unchecked Sendable {
    struct Histogram {
        let buckets: [Double]
        var counts: [Int]
        var sum = 0.0
        var count = 0

        init(buckets: [Double]) {
            self.buckets = buckets
            counts = Array(repeating: 0, count: buckets.count)
        }

        mutating func observe(_ value: Double) {
            for (i, bound) in buckets.enumerated() where value <= bound { counts[i] += 1 }
            sum += value
            count += 1
        }
    }

    private let lock = NSLock()
    private let modelName: String
    private var running = 0
    private var waiting = 0
    private var cacheUsed = 0
    private var cacheLimit = 1
    private var promptTokens = 0
    private var generationTokens = 0
    private var prefixCacheQueries = 0
    private var prefixCacheHits = 0
    private var finished: [FinishReason: Int] = [:]
    private var aborted = 0
    private var httpResponses: [Int: Int] = [:]
    // vLLM's bucket bounds (v1 PrometheusStatLogger).
    private var timeToFirstToken = Histogram(buckets: [
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
        160.0, 640.0, 2560.0,
    ])
    private var interTokenLatency = Histogram(buckets: [
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    ])
    private var requestLatency = Histogram(buckets: [
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
        1920.0, 7680.0,
    ])
    private var queueTime = Histogram(buckets: [
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
        1920.0, 7680.0,
    ])

    public init(modelName: String) {
        self.modelName = modelName
    }

    private func update(_ body: (ServerMetrics) -> Void) {
        lock.lock()
        body(self)
        lock.unlock()
    }

    func setRunning(_ value: Int) { update { $0.running = value } }
    func setWaiting(_ value: Int) { update { $0.waiting = value } }
    func setCacheUsed(bytes: Int) { update { $0.cacheUsed = bytes } }
    func setCacheLimit(bytes: Int) { update { $0.cacheLimit = max(1, bytes) } }
    func addPromptTokens(_ n: Int) { update { $0.promptTokens += n } }
    func addGenerationTokens(_ n: Int) { update { $0.generationTokens += n } }
    func addAborted() { update { $0.aborted += 1 } }
    /// A prompt of `tokens` tokens looked up in the free slots' caches, `hits` of them found.
    func addPrefixCacheQuery(tokens: Int, hits: Int) {
        update {
            $0.prefixCacheQueries += tokens
            $0.prefixCacheHits += hits
        }
    }
    func observeTimeToFirstToken(seconds: Double) { update { $0.timeToFirstToken.observe(seconds) } }
    func observeInterTokenLatency(seconds: Double) { update { $0.interTokenLatency.observe(seconds) } }
    func observeQueueTime(seconds: Double) { update { $0.queueTime.observe(seconds) } }
    func addFinished(_ reason: FinishReason, seconds: Double) {
        update {
            $0.finished[reason, default: 0] += 1
            $0.requestLatency.observe(seconds)
        }
    }
    public func addHTTPResponse(status: Int) { update { $0.httpResponses[status, default: 0] += 1 } }

    /// The Prometheus text exposition format (version 0.0.4).
    public func render() -> String {
        lock.lock()
        defer { lock.unlock() }
        let label = "model_name=\"\(Self.escape(modelName))\""
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, String)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (suffix, value) in samples { out += "\(name)\(suffix) \(value)\n" }
        }
        func value(_ name: String, _ type: String, _ help: String, _ v: Double) {
            metric(name, type, help, [("{\(label)}", Self.format(v))])
        }
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            var samples = zip(h.buckets, h.counts).map { bound, count in
                ("_bucket{\(label),le=\"\(Self.format(bound))\"}", String(count))
            }
            samples.append(("_bucket{\(label),le=\"+Inf\"}", String(h.count)))
            samples.append(("_sum{\(label)}", Self.format(h.sum)))
            samples.append(("_count{\(label)}", String(h.count)))
            metric(name, "histogram", help, samples)
        }
        value("vllm:num_requests_running", "gauge", "Number of requests in the running batch.", Double(running))
        value("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be admitted.", Double(waiting))
        value(
            "vllm:kv_cache_usage_perc", "gauge", "Fraction of the KV cache budget reserved by running requests (0 to 1).",
            Double(cacheUsed) / Double(cacheLimit))
        value("vllm:prompt_tokens_total", "counter", "Prompt tokens processed.", Double(promptTokens))
        value("vllm:generation_tokens_total", "counter", "Tokens generated.", Double(generationTokens))
        value(
            "vllm:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
            Double(prefixCacheQueries))
        value(
            "vllm:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache (their prefill skipped).",
            Double(prefixCacheHits))
        metric(
            "vllm:request_success_total", "counter", "Requests that finished, by finish reason.",
            [FinishReason.stop, .length].map { reason in
                ("{\(label),finished_reason=\"\(reason.rawValue)\"}", String(finished[reason] ?? 0))
            })
        value(
            "inference_server:aborted_requests_total", "counter",
            "Sequences stopped before they finished (client gone, shutdown).", Double(aborted))
        histogram("vllm:time_to_first_token_seconds", "Time from arrival to the first generated token.", timeToFirstToken)
        histogram("vllm:inter_token_latency_seconds", "Time between consecutive generated tokens.", interTokenLatency)
        histogram("vllm:e2e_request_latency_seconds", "Time from arrival to the last token.", requestLatency)
        histogram("vllm:request_queue_time_seconds", "Time spent waiting before prefill.", queueTime)
        metric(
            "inference_server:http_responses_total", "counter", "HTTP responses by status.",
            httpResponses.keys.sorted().map { ("{code=\"\($0)\"}", String(httpResponses[$0]!)) })
        return out
    }

    static func format(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int(v)) + (v == 0 || abs(v) >= 1 ? ".0" : "") }
        return String(v)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
