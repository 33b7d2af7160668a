import KeyCustody

// The custody service's response documents, written once like vaultd's (`Server/API/Documents.swift`): the service
// makes them, its routes send `json`, and the CLI reads them back with `init(json:)`.

/// A principal's registered signing key, by fingerprint.
public struct PrincipalKeyDocument: Sendable, Equatable {
    public var principal: String
    public var key: String
    public var registeredBy: String
    public var registeredAt: String

    public var json: JSONValue {
        .object(["principal": .string(principal), "key": .string(key), "registered_by": .string(registeredBy),
                 "registered_at": .string(registeredAt)])
    }

    public init(principal: String, key: String, registeredBy: String, registeredAt: UnixTime) {
        self.principal = principal
        self.key = key
        self.registeredBy = registeredBy
        self.registeredAt = Timestamp.format(secondsSinceEpoch: Int(registeredAt))
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "registered key")
        principal = try reader.string("principal")
        key = try reader.string("key")
        registeredBy = try reader.string("registered_by")
        registeredAt = try reader.string("registered_at")
    }
}

/// A witness alarm: raised when the platform's log did not verify, standing until a custodian clears it.
public struct WitnessAlarmDocument: Sendable, Equatable {
    public var id: Int64
    public var reason: String
    public var message: String
    public var raisedAt: String
    public var clearedAt: String?
    public var clearedBy: String?
    public var cleared: Bool { clearedAt != nil }

    public init(id: Int64, reason: String, message: String, raisedAt: UnixTime, clearedAt: UnixTime?,
                clearedBy: String?)
    {
        self.id = id
        self.reason = reason
        self.message = message
        self.raisedAt = Timestamp.format(secondsSinceEpoch: Int(raisedAt))
        self.clearedAt = clearedAt.map { Timestamp.format(secondsSinceEpoch: Int($0)) }
        self.clearedBy = clearedAt == nil ? nil : (clearedBy ?? "")
    }

    public var json: JSONValue {
        var members: [String: JSONValue] = [
            "id": .integer(id), "reason": .string(reason), "message": .string(message), "raised_at": .string(raisedAt),
            "cleared": .bool(cleared),
        ]
        if let clearedAt { members["cleared_at"] = .string(clearedAt) }
        if let clearedBy { members["cleared_by"] = .string(clearedBy) }
        return .object(members)
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "witness alarm")
        id = try reader.integer("id")
        reason = try reader.string("reason")
        message = try reader.string("message")
        raisedAt = try reader.string("raised_at")
        clearedAt = try reader.optionalString("cleared_at")
        clearedBy = try reader.optionalString("cleared_by")
    }
}

/// The custody service's answer to an approval: how many custodians approved, and whether that grants.
public struct ApprovalCountDocument: Sendable, Equatable {
    public var approvals: Int64
    public var granted: Bool { approvals >= 2 }

    public init(approvals: Int) { self.approvals = Int64(approvals) }

    public var json: JSONValue { .object(["approvals": .integer(approvals), "granted": .bool(granted)]) }

    public init(json: JSONValue) throws {
        approvals = try DocumentReader(json, "approval").integer("approvals")
    }
}

/// How many alarms a clearing cleared.
public struct ClearedAlarmsDocument: Sendable, Equatable {
    public var cleared: Int64

    public init(cleared: Int) { self.cleared = Int64(cleared) }

    public var json: JSONValue { .object(["cleared": .integer(cleared)]) }

    public init(json: JSONValue) throws {
        cleared = try DocumentReader(json, "alarm clearing").integer("cleared")
    }
}
