import HTTPTypes
import Hummingbird
import KeyCustody

/// One signed-in page being answered: what every page shows (who is signed in, the forces and their navigation, the
/// session's CSRF token for its forms, a notice left by the last action) around the page's own values.
struct ConsolePage {
    let context: ConsoleContext
    let sessions: ConsoleSessions
    let engine: VaultEngine
    let title: String
    var force: ForceID?

    init(_ context: ConsoleContext, sessions: ConsoleSessions, engine: VaultEngine, title: String,
         force: ForceID? = nil)
    {
        self.context = context
        self.sessions = sessions
        self.engine = engine
        self.title = title
        self.force = force
    }

    /// The console's sections of a force, shown to the roles that may read what they show (`Policy.Readers`). This
    /// decides only which links are shown: whether a page answers is the engine's and `Policy`'s decision, as for the
    /// API.
    static let sections: [(path: String, label: String, roles: [Role])] = [
        ("", "Overview", Policy.Readers.datasets),
        ("/retrievals", "Retrievals", Policy.Readers.retrievals),
        ("/use-cases", "Use cases", Policy.Readers.useCases),
        ("/keys", "Keys", Policy.Readers.keys),
        ("/certificates", "Certificates", Policy.Readers.certificates),
        ("/audit", "Audit", Policy.Readers.audit),
    ]

    /// `showNotice`: the notice left by the last action is shown (and then gone); an error page leaves it.
    func render(_ template: String, _ values: [String: Any], status: HTTPResponse.Status = .ok,
                section: String? = nil, showNotice: Bool = true) -> Response
    {
        let principal = context.principal
        var all = values
        all["title"] = values["title"] ?? title
        // Not `principal`: rows of the pages have principals of their own, and a row without one must not show this.
        all["signed_in"] = principal.id
        all["csrf"] = context.console.session.csrf
        all["forces"] = engine.forces.filter { principal.hasAny(of: Role.allCases, for: $0) }.map { served in
            [
                "id": served.rawValue, "current": served == force,
                "roles": Role.allCases.filter { principal.has($0, for: served) }.map(\.rawValue)
                    .joined(separator: ", "),
            ] as [String: Any]
        }
        all["is_ops"] = !principal.forces(holding: [.ops]).isDisjoint(with: engine.forces)
        if let force {
            all["force"] = force.rawValue
            all["nav"] = Self.sections.filter { principal.hasAny(of: $0.roles, for: force) }.map { item in
                ["href": "/ui/forces/\(force)\(item.path)", "label": item.label,
                 "current": item.path == (section ?? "")] as [String: Any]
            }
        }
        if showNotice, let notice = sessions.takeNotice(context.console.cookie) { all["notice"] = notice }
        return Console.html(template, all, status: status)
    }

    /// Leaves `notice` for the next page of the session and sends the browser there (post, redirect, get).
    func done(_ notice: String, then location: String) -> Response {
        sessions.setNotice(context.console.cookie, notice)
        return Console.redirect(location)
    }
}
