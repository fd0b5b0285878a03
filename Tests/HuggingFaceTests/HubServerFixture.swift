import Foundation
import HTTP
import Testing
import TestSupport

@testable import HuggingFace

func fetcher(endpoint: String, cache: String, token: String? = nil, jobs: Int = 4, threshold: Int64 = 1 << 20) -> SnapshotFetcher {
    let config = HubConfiguration(endpoint: endpoint, cacheDirectory: cache, token: token, offline: false)
    var f = SnapshotFetcher(client: HubClient(configuration: config, retry: RetryPolicy(attempts: 8, baseDelay: 0.01, maxDelay: 0.2)))
    f.jobs = jobs
    f.parallelThreshold = threshold
    return f
}
