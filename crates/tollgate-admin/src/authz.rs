//! Who may do what in the admin API: the [`Principal`] a request
//! authenticated as, and the rules — written here once — that the router's
//! middleware ([`authorize`]) and the handlers apply.
//!
//! | role | scope | may |
//! |---|---|---|
//! | `super_admin` | global | everything |
//! | `auditor` | global | read everything (every `GET`); write nothing |
//! | `team_admin` | a team | everything on its team's services, APIs, consumers and subscriptions (those of its services); users whose every membership is in its teams; OpenAPI import onto its services |
//! | `developer` | a team | read its team's resources and logs; create consumers and their keys; request (pending) subscriptions for its consumers, to any service, and revoke them |
//!
//! A user holds the union of its memberships' rights. A resource belongs to
//! the team the store records for it (an API's or a subscription's is its
//! service's); a subscription is also its consumer's team's, the side that
//! asks. A team member never learns about another team's resources: reading,
//! changing or acting on one answers 404, exactly as if it did not exist, and
//! lists leave them out. 403 `forbidden` is only for what the caller may see
//! but not do. Teams, identity providers, blocks, `apply` and resources with
//! no team are the global roles' alone.
//!
//! Names are global: creating a resource whose name another team uses still
//! answers 409 `already_exists`, which tells that the name is taken (not
//! what it holds).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use tollgate_config::resources::Kind;
use tollgate_config::Config;
use tollgate_store::{Membership, GLOBAL_TEAM};

use crate::api::{AdminApi, ApiError};

/// An admin role: two global ones, two held in a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Developer,
    TeamAdmin,
    Auditor,
    SuperAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::SuperAdmin,
        Role::TeamAdmin,
        Role::Developer,
        Role::Auditor,
    ];

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "super_admin",
            Role::Auditor => "auditor",
            Role::TeamAdmin => "team_admin",
            Role::Developer => "developer",
        }
    }

    /// `super_admin` and `auditor` hold everywhere (team `*`); the others in a team.
    pub fn is_global(self) -> bool {
        matches!(self, Role::SuperAdmin | Role::Auditor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request acts as: an admin token of no user (the bootstrap token),
/// or a user by one of its tokens or its console session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// The audit log's actor: the user's name, or the token's.
    pub name: String,
    /// The user, when the credential is a user's.
    pub user: Option<String>,
    /// `super_admin` or `auditor`, if held (`super_admin` when both).
    pub global: Option<Role>,
    /// The role held in each team (the higher one when several are listed).
    pub teams: BTreeMap<String, Role>,
}

impl Principal {
    /// A token of no user, with the role stored with it; a role this
    /// version does not know grants nothing.
    pub fn token(name: &str, role: &str) -> Principal {
        Principal {
            name: name.to_string(),
            global: Role::parse(role).filter(|r| r.is_global()),
            ..Principal::default()
        }
    }

    /// The user `name`, with the rights of its memberships.
    pub fn user(name: &str, memberships: &[Membership]) -> Principal {
        let mut principal = Principal {
            name: name.to_string(),
            user: Some(name.to_string()),
            ..Principal::default()
        };
        for membership in memberships {
            let Some(role) = Role::parse(&membership.role) else {
                continue;
            };
            if role.is_global() {
                principal.global = principal.global.max(Some(role));
            } else if membership.team != GLOBAL_TEAM {
                let held = principal
                    .teams
                    .entry(membership.team.clone())
                    .or_insert(role);
                *held = (*held).max(role);
            }
        }
        principal
    }

    pub fn is_super_admin(&self) -> bool {
        self.global == Some(Role::SuperAdmin)
    }

    /// `super_admin` and `auditor` read everything.
    pub fn reads_everything(&self) -> bool {
        self.global.is_some()
    }

    /// Holds any role in `team`.
    pub fn is_member(&self, team: &str) -> bool {
        self.teams.contains_key(team)
    }

    /// Holds `team_admin` in `team`.
    pub fn administers(&self, team: &str) -> bool {
        self.teams.get(team) == Some(&Role::TeamAdmin)
    }

    /// Whether any write at all may be allowed: a pure auditor's never is.
    pub fn writes_anything(&self) -> bool {
        self.is_super_admin() || !self.teams.is_empty()
    }

    fn member_of(&self, team: Option<&str>) -> bool {
        team.is_some_and(|t| self.is_member(t))
    }

    fn admin_of(&self, team: Option<&str>) -> bool {
        team.is_some_and(|t| self.administers(t))
    }
}

/// ACL groups are names shared by every team: a consumer in group `g` is
/// admitted by any ACL that allows `g`. So a group that an ACL outside the
/// caller's teams allows (another team's API or service, a teamless one, or
/// the global policies) is given to a consumer only by a super_admin —
/// otherwise a team could put its consumer through another team's ACL.
/// `added` are the groups the write gives that the consumer did not have.
pub fn check_groups(principal: &Principal, config: &Config, added: &[&str]) -> Result<(), Refusal> {
    if principal.is_super_admin() || added.is_empty() {
        return Ok(());
    }
    let service_team = |name: &str| {
        config
            .services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.team.as_deref())
    };
    let mut foreign = vec![&config.policies];
    for service in &config.services {
        if !principal.member_of(service.team.as_deref()) {
            foreign.push(&service.policies);
        }
    }
    for api in &config.apis {
        if !principal.member_of(service_team(&api.service)) {
            foreign.push(&api.policies);
        }
    }
    for group in added {
        let granted_elsewhere = foreign.iter().any(|policies| {
            policies
                .acl
                .as_ref()
                .is_some_and(|acl| acl.allow_groups.iter().any(|g| g == group))
        });
        if granted_elsewhere {
            return Err(Refusal::forbidden(format!(
                "group `{group}` is allowed by an ACL outside your teams: only a super_admin may give it"
            )));
        }
    }
    Ok(())
}

/// The teams a resource belongs to, as the rules see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    /// The store's `team`: a team's own name, a service's or consumer's
    /// `team`, an API's or subscription's service's team; none for identity
    /// providers and blocks.
    pub team: Option<String>,
    /// A subscription's consumer's team: the side that asks.
    pub requester: Option<String>,
    /// A subscription whose status is `pending`.
    pub pending: bool,
}

/// Which team each service and consumer of a configuration belongs to.
pub struct Directory {
    services: HashMap<String, Option<String>>,
    consumers: HashMap<String, Option<String>>,
}

impl Directory {
    pub fn new(config: &Config) -> Directory {
        Directory {
            services: config
                .services
                .iter()
                .map(|s| (s.name.clone(), s.team.clone()))
                .collect(),
            consumers: config
                .consumers
                .iter()
                .map(|c| (c.name.clone(), c.team.clone()))
                .collect(),
        }
    }

    fn service_team(&self, name: Option<&str>) -> Option<String> {
        self.services.get(name?).cloned().flatten()
    }

    fn consumer_team(&self, name: Option<&str>) -> Option<String> {
        self.consumers.get(name?).cloned().flatten()
    }

    /// The owners of a resource of `kind` whose body is `body` (as stored,
    /// or as a write would store it), its references resolved here.
    pub fn owners(&self, kind: Kind, body: &Value) -> Owners {
        let field = |name: &str| body.get(name).and_then(Value::as_str);
        match kind {
            Kind::Teams => Owners {
                team: field("name").map(String::from),
                ..Owners::default()
            },
            Kind::IdentityProviders
            | Kind::Blocks
            | Kind::AiProviders
            | Kind::AiModels
            | Kind::AiPrices => Owners::default(),
            Kind::Consumers | Kind::Services => Owners {
                team: field("team").map(String::from),
                ..Owners::default()
            },
            Kind::Apis => Owners {
                team: self.service_team(field("service")),
                ..Owners::default()
            },
            Kind::Subscriptions => Owners {
                team: self.service_team(field("service")),
                requester: self.consumer_team(field("consumer")),
                pending: field("status") == Some("pending"),
            },
        }
    }

    /// The services `principal` may see, or `None` for all of them.
    pub fn visible_services(&self, principal: &Principal) -> Option<Vec<String>> {
        if principal.reads_everything() {
            return None;
        }
        let mut names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, team)| principal.member_of(team.as_deref()))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        Some(names)
    }

    pub(crate) fn sees_service(&self, principal: &Principal, name: &str) -> bool {
        principal.reads_everything()
            || self
                .services
                .get(name)
                .is_some_and(|team| principal.member_of(team.as_deref()))
    }
}

/// Whether `principal` may see a resource owned by `owners`: the global
/// roles see everything, a team member its teams' resources (a
/// subscription is also its consumer's team's).
pub fn can_read(principal: &Principal, owners: &Owners) -> bool {
    principal.reads_everything()
        || principal.member_of(owners.team.as_deref())
        || principal.member_of(owners.requester.as_deref())
}

/// What a write does to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
    CreateKey,
    DeleteKey,
    Approve,
    Reject,
    Revoke,
}

impl Verb {
    /// The verb of a control plane edit: its audit action when it names one,
    /// else what it does to a resource that did (`existed`) or did not exist.
    pub fn of(action: Option<&str>, existed: bool, deletes: bool) -> Verb {
        match action {
            Some("create_key") => Verb::CreateKey,
            Some("delete_key") => Verb::DeleteKey,
            Some("approve") => Verb::Approve,
            Some("reject") => Verb::Reject,
            Some("revoke") => Verb::Revoke,
            _ if !existed => Verb::Create,
            _ if deletes => Verb::Delete,
            _ => Verb::Update,
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not see what it addressed: answer as if it did not exist.
    NotFound,
    /// The caller may see it but not do this.
    Forbidden(String),
}

impl Refusal {
    fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal::Forbidden(message.into())
    }
}

/// 403 `forbidden`.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Whether `principal` may apply `verb` to a resource of `kind` owned by
/// `before` (if it exists) so that it is owned by `after` (unless deleted).
pub fn check_write(
    principal: &Principal,
    kind: Kind,
    verb: Verb,
    before: Option<&Owners>,
    after: Option<&Owners>,
) -> Result<(), Refusal> {
    if principal.is_super_admin() {
        return Ok(());
    }
    if before.is_some_and(|owners| !can_read(principal, owners)) {
        return Err(Refusal::NotFound);
    }
    let admin = |o: &Owners| principal.admin_of(o.team.as_deref());
    let member = |o: &Owners| principal.member_of(o.team.as_deref());
    let requester = |o: &Owners| principal.member_of(o.requester.as_deref());
    // What the resource is and what it would be must both be the caller's.
    let both = |rule: &dyn Fn(&Owners) -> bool| before.is_none_or(rule) && after.is_none_or(rule);
    let (allowed, why) = match (kind, verb) {
        (Kind::Teams | Kind::IdentityProviders | Kind::Blocks, _) => (
            false,
            "only a super_admin may change teams, identity providers and blocks",
        ),
        (Kind::AiProviders | Kind::AiModels | Kind::AiPrices, _) => (
            false,
            "only a super_admin may change AI providers, models and prices",
        ),
        (Kind::Services | Kind::Apis, _) => (
            both(&admin),
            "only a team_admin of its team (before and after the change) may change it",
        ),
        (Kind::Consumers, Verb::Create) => (
            after.is_some_and(member),
            "a consumer is created in a team the caller is a developer or team_admin of",
        ),
        (Kind::Consumers, Verb::CreateKey | Verb::DeleteKey) => (
            both(&member),
            "only the consumer's team's developers and team_admins manage its keys",
        ),
        (Kind::Consumers, _) => (
            both(&admin),
            "only a team_admin of its team (before and after the change) may change it",
        ),
        (Kind::Subscriptions, Verb::Create) => (
            after.is_some_and(|o| admin(o) || (o.pending && requester(o))),
            "a subscription is requested (status pending) for a consumer of the caller's \
             team; only the service's team_admin may create it in another status",
        ),
        (Kind::Subscriptions, Verb::Revoke) => (
            before.is_some_and(|o| admin(o) || requester(o)),
            "only the service's team_admin or the consumer's team may revoke it",
        ),
        (Kind::Subscriptions, _) => (
            both(&admin),
            "only a team_admin of the service's team may decide or change a subscription",
        ),
    };
    if allowed {
        Ok(())
    } else if !principal.writes_anything() {
        Err(Refusal::forbidden("this role may read, not write"))
    } else {
        Err(Refusal::forbidden(why))
    }
}

/// Whether `principal` may see the user `name` with `memberships`: the
/// global roles every user, a user itself, a team_admin the users of its teams.
pub fn can_see_user(principal: &Principal, name: &str, memberships: &[Membership]) -> bool {
    principal.reads_everything()
        || principal.user.as_deref() == Some(name)
        || memberships.iter().any(|m| principal.administers(&m.team))
}

/// Whether `principal` may give a user exactly `memberships`, or manage
/// (change, delete) a user who has them: a super_admin always; a
/// team_admin when every one is a team role in a team it administers.
pub fn may_assign(principal: &Principal, memberships: &[Membership]) -> bool {
    principal.is_super_admin()
        || (!memberships.is_empty()
            && memberships.iter().all(|m| {
                Role::parse(&m.role).is_some_and(|r| !r.is_global())
                    && principal.administers(&m.team)
            }))
}

/// The route-level rules, for the route the router matched (`None` for
/// none: the fallback answers 404), its query and the configuration served.
/// Resource-level rules are the handlers'.
pub fn check_endpoint(
    principal: &Principal,
    method: &Method,
    route: Option<&str>,
    query: &HashMap<String, String>,
    config: &Config,
) -> Result<(), Refusal> {
    let reads_only = method == Method::GET || method == Method::HEAD;
    let Some(route) = route else {
        return Ok(());
    };
    match route {
        "/admin/v1/login"
        | "/admin/v1/logout"
        | "/admin/v1/whoami"
        | "/admin/v1/upstreams"
        | "/admin/v1/logs"
        | "/admin/v1/openapi.json" => Ok(()),
        // The handlers apply the users' rules (a user may manage itself).
        "/admin/v1/users"
        | "/admin/v1/users/{name}"
        | "/admin/v1/users/{name}/tokens"
        | "/admin/v1/tokens"
        | "/admin/v1/tokens/{id}" => Ok(()),
        "/admin/v1/audit"
        | "/admin/v1/compliance"
        | "/admin/v1/export"
        | "/admin/v1/analytics/deprecated" => {
            if principal.reads_everything() {
                Ok(())
            } else {
                Err(Refusal::forbidden(
                    "only super_admins and auditors read the whole configuration, its audit \
                     log and compliance report",
                ))
            }
        }
        "/admin/v1/nodes" => {
            if principal.reads_everything() {
                Ok(())
            } else {
                Err(Refusal::forbidden(
                    "only super_admins and auditors read the node list",
                ))
            }
        }
        "/admin/v1/analytics" => {
            let scoped = query
                .get("service")
                .is_some_and(|service| Directory::new(config).sees_service(principal, service));
            if principal.reads_everything() || scoped {
                Ok(())
            } else {
                Err(Refusal::forbidden(
                    "a team member's analytics name one of their teams' services: ?service=",
                ))
            }
        }
        "/admin/v1/apply" => {
            if principal.is_super_admin() {
                Ok(())
            } else {
                Err(Refusal::forbidden(
                    "only a super_admin may apply a configuration",
                ))
            }
        }
        "/admin/v1/import/openapi" => {
            if principal.is_super_admin() || principal.teams.values().any(|r| *r == Role::TeamAdmin)
            {
                Ok(())
            } else {
                Err(Refusal::forbidden(
                    "only a super_admin or a team_admin (onto its team's services) may import",
                ))
            }
        }
        "/admin/v1/{kind}"
        | "/admin/v1/{kind}/{name}"
        | "/admin/v1/ai/{kind}"
        | "/admin/v1/ai/{kind}/{name}"
        | "/admin/v1/apis/{name}/openapi.json"
        | "/admin/v1/consumers/{name}/keys"
        | "/admin/v1/consumers/{name}/keys/{id}"
        | "/admin/v1/subscriptions/{id}/{action}" => {
            if reads_only || principal.writes_anything() {
                Ok(())
            } else {
                Err(Refusal::forbidden("this role may read, not write"))
            }
        }
        // A route these rules do not know yet: the super_admin's alone.
        _ if principal.is_super_admin() => Ok(()),
        _ => Err(Refusal::forbidden(
            "only a super_admin may call this endpoint",
        )),
    }
}

/// The middleware that applies [`check_endpoint`] to every `/admin/v1/`
/// request, after [`crate::api`]'s authentication put the [`Principal`] in
/// its extensions (`/admin/v1/login` has none, and needs none).
pub async fn authorize(
    State(api): State<AdminApi>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(principal) = request.extensions().get::<Principal>() else {
        let login = request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| p.as_str() == "/admin/v1/login");
        if login {
            return Ok(next.run(request).await);
        }
        return Err(forbidden("no principal"));
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let query = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    match check_endpoint(
        principal,
        request.method(),
        route.as_deref(),
        &query,
        &api.config(),
    ) {
        Ok(()) => Ok(next.run(request).await),
        Err(Refusal::Forbidden(message)) => Err(forbidden(message)),
        Err(Refusal::NotFound) => Err(ApiError::not_found(format!(
            "no admin endpoint at {}",
            request.uri().path()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(team: &str, role: &str) -> Membership {
        Membership {
            team: team.into(),
            role: role.into(),
        }
    }

    fn owned(team: &str) -> Owners {
        Owners {
            team: Some(team.into()),
            ..Owners::default()
        }
    }

    fn subscription(service_team: &str, consumer_team: &str, pending: bool) -> Owners {
        Owners {
            team: Some(service_team.into()),
            requester: Some(consumer_team.into()),
            pending,
        }
    }

    #[test]
    fn principals_hold_the_highest_role_per_team() {
        let p = Principal::user(
            "ann",
            &[
                member("a", "developer"),
                member("a", "team_admin"),
                member("*", "auditor"),
                member("b", "developer"),
                member("c", "owner"),
            ],
        );
        assert!(p.administers("a") && !p.administers("b") && p.is_member("b"));
        assert!(!p.is_member("c"));
        assert!(p.reads_everything() && !p.is_super_admin());
        assert_eq!(
            Principal::token("t", "super_admin").global,
            Some(Role::SuperAdmin)
        );
        assert_eq!(Principal::token("t", "team_admin").global, None);
        assert!(!Principal::token("t", "whatever").writes_anything());
    }

    #[test]
    fn other_teams_resources_are_not_found_and_own_ones_follow_the_role() {
        let admin = Principal::user("a", &[member("a", "team_admin")]);
        let dev = Principal::user("d", &[member("a", "developer")]);
        let auditor = Principal::user("au", &[member("*", "auditor")]);
        let (a, b) = (owned("a"), owned("b"));
        let none = Owners::default();
        use Verb::*;
        let forbidden = |r: Result<(), Refusal>| matches!(r, Err(Refusal::Forbidden(_)));
        for p in [&admin, &dev] {
            assert!(can_read(p, &a) && !can_read(p, &b) && !can_read(p, &none));
            for verb in [Update, Delete, CreateKey, Approve, Revoke] {
                for kind in [Kind::Services, Kind::Consumers, Kind::Subscriptions] {
                    assert_eq!(
                        check_write(p, kind, verb, Some(&b), Some(&b)),
                        Err(Refusal::NotFound)
                    );
                }
            }
        }
        assert!(can_read(&auditor, &b) && can_read(&auditor, &none));
        assert!(forbidden(check_write(
            &auditor,
            Kind::Services,
            Update,
            Some(&a),
            Some(&a)
        )));

        assert_eq!(
            check_write(&admin, Kind::Services, Create, None, Some(&a)),
            Ok(())
        );
        assert!(forbidden(check_write(
            &admin,
            Kind::Services,
            Create,
            None,
            Some(&b)
        )));
        assert!(forbidden(check_write(
            &admin,
            Kind::Services,
            Update,
            Some(&a),
            Some(&b)
        )));
        assert!(forbidden(check_write(
            &admin,
            Kind::Services,
            Create,
            None,
            Some(&none)
        )));
        assert!(forbidden(check_write(
            &admin,
            Kind::Teams,
            Update,
            Some(&a),
            Some(&a)
        )));
        assert!(forbidden(check_write(
            &dev,
            Kind::Services,
            Update,
            Some(&a),
            Some(&a)
        )));
        assert_eq!(
            check_write(&dev, Kind::Consumers, Create, None, Some(&a)),
            Ok(())
        );
        assert_eq!(
            check_write(&dev, Kind::Consumers, CreateKey, Some(&a), Some(&a)),
            Ok(())
        );
        assert!(forbidden(check_write(
            &dev,
            Kind::Consumers,
            Delete,
            Some(&a),
            None
        )));
    }

    #[test]
    fn subscriptions_are_requested_by_the_consumer_side_and_decided_by_the_service_side() {
        let dev_a = Principal::user("d", &[member("a", "developer")]);
        let admin_a = Principal::user("x", &[member("a", "team_admin")]);
        let admin_b = Principal::user("y", &[member("b", "team_admin")]);
        let forbidden = |r: Result<(), Refusal>| matches!(r, Err(Refusal::Forbidden(_)));
        let request = subscription("b", "a", true);
        let approved = subscription("b", "a", false);
        use Verb::*;
        let k = Kind::Subscriptions;
        assert_eq!(check_write(&dev_a, k, Create, None, Some(&request)), Ok(()));
        assert!(forbidden(check_write(
            &dev_a,
            k,
            Create,
            None,
            Some(&approved)
        )));
        assert!(forbidden(check_write(
            &admin_a,
            k,
            Create,
            None,
            Some(&approved)
        )));
        assert!(forbidden(check_write(
            &dev_a,
            k,
            Approve,
            Some(&request),
            Some(&approved)
        )));
        assert!(forbidden(check_write(
            &admin_a,
            k,
            Approve,
            Some(&request),
            Some(&approved)
        )));
        assert_eq!(
            check_write(&admin_b, k, Approve, Some(&request), Some(&approved)),
            Ok(())
        );
        assert_eq!(
            check_write(&dev_a, k, Revoke, Some(&approved), Some(&approved)),
            Ok(())
        );
        assert!(can_read(&dev_a, &request) && can_read(&admin_b, &request));
        let elsewhere = subscription("b", "c", true);
        assert!(!can_read(&dev_a, &elsewhere));
        assert_eq!(
            check_write(&dev_a, k, Revoke, Some(&elsewhere), Some(&elsewhere)),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn users_are_managed_by_whoever_administers_all_their_teams() {
        let admin_a = Principal::user("x", &[member("a", "team_admin")]);
        let root = Principal::token("bootstrap", "super_admin");
        assert!(may_assign(&admin_a, &[member("a", "developer")]));
        assert!(!may_assign(
            &admin_a,
            &[member("a", "developer"), member("b", "developer")]
        ));
        assert!(!may_assign(&admin_a, &[member("*", "auditor")]));
        assert!(!may_assign(&admin_a, &[]));
        assert!(may_assign(&root, &[member("*", "super_admin")]));
        assert!(can_see_user(
            &admin_a,
            "z",
            &[member("a", "developer"), member("b", "developer")]
        ));
        assert!(!can_see_user(&admin_a, "z", &[member("b", "team_admin")]));
        assert!(can_see_user(&admin_a, "x", &[]));
    }

    #[test]
    fn routes_the_rules_do_not_know_are_the_super_admins_alone() {
        let config = Config::default();
        let none = HashMap::new();
        let auditor = Principal::user("au", &[member("*", "auditor")]);
        let root = Principal::token("bootstrap", "super_admin");
        let route = Some("/admin/v1/something/new");
        assert!(check_endpoint(&root, &Method::GET, route, &none, &config).is_ok());
        assert!(check_endpoint(&auditor, &Method::GET, route, &none, &config).is_err());
        // The fallback (no route) answers 404 to everyone authenticated.
        assert!(check_endpoint(&auditor, &Method::GET, None, &none, &config).is_ok());
        let writes = check_endpoint(
            &auditor,
            &Method::POST,
            Some("/admin/v1/{kind}"),
            &none,
            &config,
        );
        assert!(matches!(writes, Err(Refusal::Forbidden(_))));
    }

    #[test]
    fn the_node_list_is_for_the_global_roles() {
        let config = Config::default();
        let none = HashMap::new();
        let route = Some("/admin/v1/nodes");
        let auditor = Principal::user("au", &[member("*", "auditor")]);
        let root = Principal::token("bootstrap", "super_admin");
        let admin_a = Principal::user("aa", &[member("a", "team_admin")]);
        assert!(check_endpoint(&root, &Method::GET, route, &none, &config).is_ok());
        assert!(check_endpoint(&auditor, &Method::GET, route, &none, &config).is_ok());
        assert!(matches!(
            check_endpoint(&admin_a, &Method::GET, route, &none, &config),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn owners_follow_references() {
        let config = tollgate_config::from_yaml(
            "teams: [{ name: a }, { name: b }]\n\
             consumers: [{ name: c, team: a }]\n\
             services: [{ name: s, team: b, upstream: { targets: [{ url: 'http://x' }] } }]\n",
        )
        .unwrap();
        let d = Directory::new(&config);
        assert_eq!(
            d.owners(Kind::Apis, &json!({ "name": "x", "service": "s" })),
            owned("b")
        );
        assert_eq!(
            d.owners(
                Kind::Subscriptions,
                &json!({ "consumer": "c", "service": "s", "status": "pending" })
            ),
            subscription("b", "a", true)
        );
        assert_eq!(
            d.owners(Kind::Blocks, &json!({ "id": "x" })),
            Owners::default()
        );
        let dev_b = Principal::user("d", &[member("b", "developer")]);
        assert_eq!(d.visible_services(&dev_b), Some(vec!["s".to_string()]));
        assert_eq!(d.visible_services(&Principal::user("n", &[])), Some(vec![]));
    }
}
