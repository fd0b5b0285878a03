import Testing

@testable import Inference

@Suite struct InferenceModuleTests {
    @Test func moduleBuilds() { #expect(Bool(true)) }
}
