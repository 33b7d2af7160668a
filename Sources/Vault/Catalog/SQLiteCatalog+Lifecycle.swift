import GRDB
import KeyCustody

extension SQLiteCatalog {
    static func registerLifecycleMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v4: key lifecycle, retrieval, hold, shredding") { db in
            try db.execute(sql: """
                ALTER TABLE extracts ADD COLUMN kek TEXT;
                UPDATE extracts SET kek = json_extract(wrapped_key, '$.kek');
                CREATE INDEX extracts_by_kek ON extracts (force, kek, id);
                CREATE INDEX extracts_archived_by_kek ON extracts (force, kek) WHERE state = 'archived';
                ALTER TABLE extracts ADD COLUMN hold_reason TEXT;
                ALTER TABLE extracts ADD COLUMN hold_by TEXT;
                ALTER TABLE extracts ADD COLUMN hold_at INTEGER;
                ALTER TABLE extracts ADD COLUMN shred_reason TEXT;
                ALTER TABLE extracts ADD COLUMN shred_note TEXT;
                ALTER TABLE extracts ADD COLUMN shred_by TEXT;
                ALTER TABLE extracts ADD COLUMN shred_started_at INTEGER;
                ALTER TABLE extracts ADD COLUMN shredded_at INTEGER;
                ALTER TABLE extracts ADD COLUMN certificate TEXT;
                CREATE INDEX extracts_by_expiry ON extracts (state, expires_at);
                -- Every KEK an extract's key was ever wrapped under, in order (rowid), with when it started.
                CREATE TABLE extract_keks (
                    force TEXT NOT NULL, extract TEXT NOT NULL, kek TEXT NOT NULL, since INTEGER NOT NULL,
                    PRIMARY KEY (force, extract, kek));
                INSERT INTO extract_keks (force, extract, kek, since)
                    SELECT force, id, kek, created_at FROM extracts ORDER BY created_at, id;
                CREATE TABLE rotations (
                    force TEXT NOT NULL, to_kek TEXT NOT NULL, from_kek TEXT, requested_by TEXT NOT NULL,
                    started_at INTEGER NOT NULL, finished_at INTEGER, processed INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (force, to_kek));
                CREATE TABLE rewrap_failures (
                    force TEXT NOT NULL, extract TEXT NOT NULL, kek TEXT NOT NULL, code TEXT NOT NULL,
                    message TEXT NOT NULL, time INTEGER NOT NULL, PRIMARY KEY (force, extract, kek));
                -- Master keys being or already destroyed: nothing may be committed under them again.
                CREATE TABLE destroyed_keks (
                    force TEXT NOT NULL, kek TEXT NOT NULL, time INTEGER NOT NULL, PRIMARY KEY (force, kek));
                CREATE TABLE retrievals (
                    force TEXT NOT NULL, id TEXT NOT NULL, extract TEXT NOT NULL, dataset TEXT NOT NULL,
                    analyst TEXT NOT NULL, use_case TEXT NOT NULL, reason TEXT NOT NULL,
                    requested_at INTEGER NOT NULL, approvals TEXT NOT NULL, granted_at INTEGER, expires_at INTEGER,
                    PRIMARY KEY (force, id));
                CREATE TABLE certificates (
                    force TEXT NOT NULL, id TEXT NOT NULL, extract TEXT NOT NULL, issued_at INTEGER NOT NULL,
                    verdict TEXT NOT NULL, body TEXT NOT NULL, signature TEXT NOT NULL, PRIMARY KEY (force, id));
                CREATE INDEX certificates_by_extract ON certificates (force, extract, issued_at);
                CREATE TRIGGER certificates_no_update BEFORE UPDATE ON certificates
                    BEGIN SELECT RAISE(ABORT, 'destruction certificates are append-only'); END;
                CREATE TRIGGER certificates_no_delete BEFORE DELETE ON certificates
                    BEGIN SELECT RAISE(ABORT, 'destruction certificates are append-only'); END;
                """)
        }
    }
}
