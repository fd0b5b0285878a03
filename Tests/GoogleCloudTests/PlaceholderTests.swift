import Testing

@testable import GoogleCloud

@Suite struct GoogleCloudModuleTests {
    @Test func moduleBuilds() { #expect(Bool(true)) }
}
