/// The attention keys and values of every layer for the tokens a session has seen, in the backend's
/// cache type: f32 like the activations on the CPU, bf16 on a GPU (the HF reference keeps them in
/// the compute dtype, bf16 for Gemma 3).
///
/// Local (sliding-window) layers keep a ring buffer: a query at position p only sees p - window + 1...p
/// (§1.2), and a batch of n new tokens is written before it attends, so window + maxBatch - 1 slots
/// always hold what the batch needs, whatever the context length. Global layers grow by doubling
/// up to the context limit.
public final class KVCache<Backend: ComputeBackend> {
    public struct Layer {
        public var keys: Backend.Buffer  // (capacity, kvHeads * headDim)
        public var values: Backend.Buffer  // (capacity, kvHeads * headDim)
        /// Slots in the ring; position p lives in slot p % capacity.
        public var capacity: Int
        /// nil for global layers.
        public let window: Int?
    }

    let backend: Backend
    /// Floats per position per layer: kvHeads * headDim.
    public let rowSize: Int
    public let contextLimit: Int
    public private(set) var layers: [Layer]

    init(backend: Backend, config: Gemma3Config, contextLimit: Int, maximumBatch: Int) {
        self.backend = backend
        rowSize = config.kvHeadCount * config.headDimension
        self.contextLimit = contextLimit
        let initialGlobal = min(contextLimit, max(1024, maximumBatch))
        layers = config.layerTypes.map { type in
            let window = type == .sliding && config.slidingWindow < contextLimit ? config.slidingWindow : nil
            let capacity = window.map { min(contextLimit, $0 + maximumBatch - 1) } ?? initialGlobal
            return Layer(
                keys: backend.makeCacheBuffer(count: capacity * config.kvHeadCount * config.headDimension),
                values: backend.makeCacheBuffer(count: capacity * config.kvHeadCount * config.headDimension),
                capacity: capacity, window: window)
        }
    }

    /// Makes room for positions ..<positions on the global layers, keeping the first `kept` positions.
    func reserve(positions: Int, kept: Int) {
        precondition(positions <= contextLimit)
        for i in layers.indices where layers[i].window == nil && layers[i].capacity < positions {
            var capacity = layers[i].capacity
            while capacity < positions { capacity = min(contextLimit, capacity * 2) }
            let keys = backend.makeCacheBuffer(count: capacity * rowSize)
            let values = backend.makeCacheBuffer(count: capacity * rowSize)
            if kept > 0 {
                // Global layers never wrap (capacity >= positions seen), so slots 0..<kept are positions 0..<kept.
                backend.copy(layers[i].keys, offset: 0, to: keys, offset: 0, count: kept * rowSize)
                backend.copy(layers[i].values, offset: 0, to: values, offset: 0, count: kept * rowSize)
            }
            layers[i].keys = keys
            layers[i].values = values
            layers[i].capacity = capacity
        }
    }

    /// Stores the keys and values of `rows` tokens (from row `sourceRow` of the buffers) at positions
    /// firstPosition... of `layer`.  keys, values: (sourceRow + rows, kvHeads * headDim). For backends
    /// without `attentionBatch` (whose cache type is f32).
    func store(
        layer index: Int, keys: Backend.Buffer, values: Backend.Buffer, sourceRow: Int = 0, rows: Int,
        firstPosition: Int
    ) {
        let layer = layers[index]
        var row = 0
        while row < rows {
            // Copy the longest run that does not wrap around the end of the ring.
            let slot = (firstPosition + row) % layer.capacity
            let run = min(rows - row, layer.capacity - slot)
            let source = (sourceRow + row) * rowSize
            backend.copy(keys, offset: source, to: layer.keys, offset: slot * rowSize, count: run * rowSize)
            backend.copy(values, offset: source, to: layer.values, offset: slot * rowSize, count: run * rowSize)
            row += run
        }
    }
}
