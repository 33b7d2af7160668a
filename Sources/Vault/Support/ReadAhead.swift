import Synchronization

/// A bounded queue between one producing task and one consuming task: the producer (reading and decrypting a blob)
/// runs up to `capacity` buffers ahead of the consumer (writing them to a TLS connection), so the two stages overlap
/// on the machine's cores instead of taking turns, and memory stays bounded by `capacity` buffers per stream.
///
/// The producer calls `send` for each element and `finish` once (with the error that ended it, if any); the consumer
/// calls `next` until it returns nil, and `cancel` when it stops early, which makes the producer's pending and later
/// `send`s throw `CancellationError`.
final class ReadAheadQueue<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var end: Result<Void, any Error>?
        var consumer: CheckedContinuation<Element?, any Error>?
        var producer: CheckedContinuation<Void, any Error>?
        var cancelled = false
    }

    private let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        precondition(capacity >= 1)
        self.capacity = capacity
    }

    /// Hands `element` to the consumer, waiting while `capacity` elements are already waiting.
    func send(_ element: Element) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let resume: () -> Void = state.withLock { state in
                if state.cancelled { return { continuation.resume(throwing: CancellationError()) } }
                if let consumer = state.consumer {
                    state.consumer = nil
                    return {
                        consumer.resume(returning: element)
                        continuation.resume()
                    }
                }
                state.items.append(element)
                if state.items.count < capacity { return { continuation.resume() } }
                state.producer = continuation
                return {}
            }
            resume()
        }
    }

    /// No more elements: `error` ends the consumer's `next` with that error once the queued elements are taken.
    func finish(throwing error: (any Error)? = nil) {
        let consumer: CheckedContinuation<Element?, any Error>? = state.withLock { state in
            state.end = error.map { .failure($0) } ?? .success(())
            guard state.items.isEmpty, let consumer = state.consumer else { return nil }
            state.consumer = nil
            return consumer
        }
        if let error { consumer?.resume(throwing: error) } else { consumer?.resume(returning: nil) }
    }

    /// The next element, nil at the end; throws the producer's error.
    func next() async throws -> Element? {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Element?, any Error>) in
            let resume: () -> Void = state.withLock { state in
                if !state.items.isEmpty {
                    let element = state.items.removeFirst()
                    let producer = state.producer
                    state.producer = nil
                    return {
                        continuation.resume(returning: element)
                        producer?.resume()
                    }
                }
                switch state.end {
                case .success: return { continuation.resume(returning: nil) }
                case .failure(let error): return { continuation.resume(throwing: error) }
                case nil:
                    state.consumer = continuation
                    return {}
                }
            }
            resume()
        }
    }

    /// The consumer stops: queued elements are dropped and the producer's waiting `send` throws.
    func cancel() {
        let producer: CheckedContinuation<Void, any Error>? = state.withLock { state in
            state.cancelled = true
            state.items.removeAll()
            let producer = state.producer
            state.producer = nil
            return producer
        }
        producer?.resume(throwing: CancellationError())
    }
}

/// Runs `produce` in a child task that feeds a `ReadAheadQueue` of `depth` elements, and hands each element to
/// `consume` in order in the calling task. An error on either side ends both; the producer never outlives the call.
func withReadAhead<Element: Sendable>(
    depth: Int,
    produce: @escaping @Sendable (_ send: (Element) async throws -> Void) async throws -> Void,
    consume: (Element) async throws -> Void
) async throws {
    let queue = ReadAheadQueue<Element>(capacity: depth)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            do {
                try await produce { try await queue.send($0) }
                queue.finish()
            } catch {
                queue.finish(throwing: error)
            }
        }
        do {
            while let element = try await queue.next() { try await consume(element) }
        } catch {
            queue.cancel()
            group.cancelAll()
            try? await group.waitForAll()
            throw error
        }
        try await group.waitForAll()
    }
}
