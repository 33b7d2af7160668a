import Synchronization
import Testing
@testable import Vault

/// The read-ahead between a read's decryption and its TLS writer: bounded, in order, and an error on either side
/// ends both without leaving the producer running.
@Suite("Read-ahead queue")
struct ReadAheadTests {
    @Test("elements arrive in order, and the producer never runs more than the depth ahead of the consumer")
    func boundedAndOrdered() async throws {
        let produced = Mutex(0)
        var received: [Int] = []
        var leads: [Int] = []
        try await withReadAhead(depth: 2, produce: { send in
            for value in 0..<50 {
                try await send(value)
                produced.withLock { $0 = value + 1 }
            }
        }, consume: { (value: Int) in
            // Give the producer every chance to run ahead before this element is taken.
            for _ in 0..<20 { await Task.yield() }
            received.append(value)
            leads.append(produced.withLock { $0 } - received.count)
        })
        #expect(received == Array(0..<50))
        // Taken: `received.count`; queued: at most 2; the one being handed over: at most 1 more.
        #expect(leads.allSatisfy { $0 <= 3 }, "the producer ran \(leads.max() ?? 0) elements ahead")
        #expect(leads.contains { $0 >= 1 }, "the producer never ran ahead: nothing overlapped")
    }

    struct Failure: Error, Equatable { let at: Int }

    @Test("a producer's error reaches the consumer after the elements before it, not before")
    func producerError() async throws {
        var received: [Int] = []
        await #expect(throws: Failure(at: 5)) {
            try await withReadAhead(depth: 3, produce: { send in
                for value in 0..<5 { try await send(value) }
                throw Failure(at: 5)
            }, consume: { (value: Int) in received.append(value) })
        }
        #expect(received == [0, 1, 2, 3, 4])
    }

    @Test("a consumer's error stops the producer waiting on a full queue")
    func consumerError() async throws {
        let stopped = Mutex<(any Error)?>(nil)
        await #expect(throws: Failure(at: 3)) {
            try await withReadAhead(depth: 1, produce: { send in
                do {
                    for value in 0..<1_000_000 { try await send(value) }
                } catch {
                    stopped.withLock { $0 = error }
                    throw error
                }
            }, consume: { (value: Int) in
                if value == 3 { throw Failure(at: 3) }
            })
        }
        // withReadAhead returned, so the producer has ended, and it ended because its send was refused.
        #expect(stopped.withLock { $0 } is CancellationError)
    }
}
