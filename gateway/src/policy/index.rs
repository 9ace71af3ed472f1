//! The decision index: every rule of every AccessPolicy, filed by connection, by subject (identity
//! or group) and by what an operation must contain for the rule to match (the literal leading
//! segments of an HTTP path glob, a Kubernetes resource, the statement kinds of a SQL rule). A
//! decision only evaluates the rules filed where the operation can reach, so its cost follows the
//! rules that could match, not the number of policies.
//!
//! SQL statements first pass the built-in guardrails ([`GUARDRAILS`]), which no Deny-free policy
//! can open by accident: a guardrail is lifted only by an Allow rule that applies, matches the
//! statement, and names the guardrail's function in `sql.functions` exactly (no wildcards).

use std::collections::HashMap;

use agentgate_crds::policy::{Action, ApprovalRule, StatementKind};

use super::operation::Operation;
use super::rule::Matcher;
use crate::config::{CompiledPolicy, CompiledRule};
use crate::protocol::postgres::classify::Statement;

/// Where a rule sits in the configuration, and how strong its action is (0 = Deny, 1 =
/// RequireApproval, 2 = Allow), so lists sort with the strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RuleRef {
    rank: u8,
    policy: u32,
    rule: u32,
}

/// Deny-overrides order: the strictest action ranks lowest.
pub(crate) fn rank(action: Action) -> u8 {
    match action {
        Action::Deny => 0,
        Action::RequireApproval => 1,
        Action::Allow => 2,
    }
}

/// HTTP rules filed in a trie over literal leading path segments.
#[derive(Debug, Default)]
struct PathTrie {
    rules: Vec<RuleRef>,
    children: HashMap<Box<str>, PathTrie>,
}

impl PathTrie {
    fn insert(&mut self, segments: &[&str], r: RuleRef) {
        let mut node = self;
        for s in segments {
            node = node.children.entry((*s).into()).or_default();
        }
        if node.rules.last() != Some(&r) {
            node.rules.push(r);
        }
    }

    fn sort(&mut self) {
        self.rules.sort_unstable();
        self.rules.dedup();
        for c in self.children.values_mut() {
            c.sort();
        }
    }

    /// The rule lists on the way from the root along `path`'s segments.
    fn collect<'a>(&'a self, path: &str, out: &mut Vec<&'a [RuleRef]>) {
        let mut node = self;
        if !node.rules.is_empty() {
            out.push(&node.rules);
        }
        for seg in path.split('/').skip(1) {
            match node.children.get(seg) {
                Some(next) => node = next,
                None => return,
            }
            if !node.rules.is_empty() {
                out.push(&node.rules);
            }
        }
    }
}

/// The rules one subject key (an identity or a group) has on one connection.
#[derive(Debug, Default)]
struct Bucket {
    http: PathTrie,
    kube_by_resource: HashMap<Box<str>, Vec<RuleRef>>,
    kube_any: Vec<RuleRef>,
    /// SQL rules by the statement kinds they list (a statement reaches the lists of all its kinds).
    sql_by_kind: HashMap<StatementKind, Vec<RuleRef>>,
    /// SQL rules listing no statement kinds.
    sql_any: Vec<RuleRef>,
    /// Policies naming this subject on this connection, in configuration order.
    policies: Vec<u32>,
}

impl Bucket {
    fn add(&mut self, rule: &CompiledRule, r: RuleRef) {
        match &rule.matcher.matcher {
            Matcher::Http(h) if h.paths.is_empty() => self.http.insert(&[], r),
            Matcher::Http(h) => {
                for g in &h.paths {
                    let prefix = g.literal_prefix();
                    if !prefix.starts_with('/') {
                        self.http.insert(&[], r);
                        continue;
                    }
                    // Only whole segments: `/api/v1/us*` files under api/v1.
                    let mut segs: Vec<&str> = prefix.split('/').skip(1).collect();
                    if !g.is_literal() || segs.last().is_some_and(|s| s.is_empty()) {
                        segs.pop();
                    }
                    self.http.insert(&segs, r);
                    // Restricting rules also match paths in other case (see rule::path_matches),
                    // which are looked up lower-cased.
                    if rule.action != Action::Allow
                        && segs.iter().any(|s| s.bytes().any(|b| b.is_ascii_uppercase()))
                    {
                        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
                        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
                        self.http.insert(&lower, r);
                    }
                }
            }
            Matcher::Kubernetes(k) => {
                if k.resources.is_empty() || k.resources.iter().any(|g| !g.is_literal()) {
                    self.kube_any.push(r);
                } else {
                    for g in &k.resources {
                        self.kube_by_resource
                            .entry(g.literal_prefix().into())
                            .or_default()
                            .push(r);
                    }
                }
            }
            Matcher::Sql(m) if m.statements.is_empty() => self.sql_any.push(r),
            Matcher::Sql(m) => {
                for k in &m.statements {
                    self.sql_by_kind.entry(*k).or_default().push(r);
                }
            }
        }
    }

    fn finish(&mut self) {
        self.http.sort();
        for l in self.kube_by_resource.values_mut() {
            l.sort_unstable();
            l.dedup();
        }
        self.kube_any.sort_unstable();
        for l in self.sql_by_kind.values_mut() {
            l.sort_unstable();
            l.dedup();
        }
        self.sql_any.sort_unstable();
        self.policies.dedup();
    }

    fn candidates<'a>(&'a self, op: &Operation<'_>, out: &mut Vec<&'a [RuleRef]>) {
        match op {
            Operation::Http(h) => {
                self.http.collect(h.path, out);
                if h.path.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.http.collect(&h.path.to_ascii_lowercase(), out);
                }
                // Restricting rules also match the path without a format suffix.
                for stem in super::rule::without_format(h.path.trim_end_matches('/')) {
                    self.http.collect(stem, out);
                    if stem.bytes().any(|b| b.is_ascii_uppercase()) {
                        self.http.collect(&stem.to_ascii_lowercase(), out);
                    }
                }
            }
            Operation::Kubernetes(k) => {
                if let Some(l) = self.kube_by_resource.get(k.resource) {
                    out.push(l);
                }
                if !self.kube_any.is_empty() {
                    out.push(&self.kube_any);
                }
            }
            Operation::Sql(q) => {
                // An Allow rule must list every kind of the statement, a Deny or RequireApproval
                // rule one: either way the rule is filed under one of them.
                for k in &q.statement.kinds {
                    if let Some(l) = self.sql_by_kind.get(k) {
                        out.push(l);
                    }
                }
                if !self.sql_any.is_empty() {
                    out.push(&self.sql_any);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct ConnectionIndex {
    by_identity: HashMap<String, Bucket>,
    by_group: HashMap<String, Bucket>,
}

/// Who is asking: the verified identity's name and its groups.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub identity: &'a str,
    pub groups: &'a [String],
}

/// The compiled index over a configuration's policies.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    by_connection: HashMap<String, ConnectionIndex>,
}

/// Why a decision came out as it did.
#[derive(Clone, Copy, Debug)]
pub enum Cause<'a> {
    /// A rule matched.
    Rule {
        policy: &'a CompiledPolicy,
        rule: &'a CompiledRule,
    },
    /// Policies apply to the subject on the connection, but none of their rules matched.
    NoRuleMatched,
    /// No policy names the subject on the connection.
    NoPolicy,
    /// Two RequireApproval rules that ask differently (approvers, count, grant, mode or timeout)
    /// both match: asking under one would skip the other's approvers, so neither is asked and the
    /// operation is refused until the rules are made not to overlap.
    ApprovalConflict {
        policy: &'a CompiledPolicy,
        rule: &'a CompiledRule,
        other_policy: &'a CompiledPolicy,
        other_rule: &'a CompiledRule,
    },
    /// A built-in guardrail refused the statement, before any policy.
    Guardrail {
        /// The guardrail's name, such as `dangerous-function`.
        name: &'static str,
        /// What tripped it: the function pattern or the command.
        detail: &'static str,
    },
}

/// A built-in guardrail on SQL statements.
#[derive(Debug)]
pub struct Guardrail {
    pub name: &'static str,
    /// What it refuses, for the explanation.
    pub why: &'static str,
    /// The function an Allow rule names to lift it; `None`: the function called.
    pub lifted_by: Option<&'static str>,
    /// Function patterns (`name` or `prefix*`) or the command it applies to.
    pub patterns: &'static [&'static str],
}

/// The guardrails, checked in order.
pub const GUARDRAILS: &[Guardrail] = &[
    Guardrail {
        name: "dangerous-function",
        why: "reads or writes server files, large objects or other databases, signals server processes, or runs SQL given as text",
        lifted_by: None,
        patterns: &[
            // Server files.
            "pg_read_file",
            "pg_read_binary_file",
            "pg_stat_file",
            "pg_ls_*",
            "pg_file_*",
            "pg_logdir_ls",
            // Large objects (lo_import and lo_export read and write server files).
            "lo_*",
            "loread",
            "lowrite",
            // Other databases.
            "dblink*",
            // Server processes and administration.
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_promote",
            "pg_switch_wal",
            "pg_switch_xlog",
            "pg_create_restore_point",
            "pg_backup_start",
            "pg_backup_stop",
            "pg_start_backup",
            "pg_stop_backup",
            "pg_wal_replay_pause",
            "pg_wal_replay_resume",
            "pg_log_backend_memory_contexts",
            "pg_create_physical_replication_slot",
            "pg_create_logical_replication_slot",
            "pg_copy_physical_replication_slot",
            "pg_copy_logical_replication_slot",
            "pg_drop_replication_slot",
            "pg_replication_slot_advance",
            "pg_logical_slot_*",
            "pg_logical_emit_message",
            "pg_replication_origin_*",
            // SQL given as text, out of sight of the classifier.
            "query_to_xml*",
            "query_to_xmlschema",
            "table_to_xml*",
            "table_to_xmlschema",
            "cursor_to_xml*",
            "schema_to_xml*",
            "database_to_xml*",
            "ts_stat",
            "ts_rewrite",
        ],
    },
    Guardrail {
        name: "copy-program",
        why: "COPY TO/FROM PROGRAM runs a program on the database server",
        lifted_by: Some("pg_execute_server_program"),
        patterns: &["COPY PROGRAM"],
    },
    Guardrail {
        name: "copy-server-file",
        why: "COPY FROM a server file reads files of the database server",
        lifted_by: Some("pg_read_server_files"),
        patterns: &["COPY FROM file"],
    },
    Guardrail {
        name: "copy-server-file",
        why: "COPY TO a server file writes files of the database server",
        lifted_by: Some("pg_write_server_files"),
        patterns: &["COPY TO file"],
    },
    Guardrail {
        name: "alter-system",
        why: "ALTER SYSTEM rewrites the server's configuration (archive_command, shared libraries, ...)",
        lifted_by: Some("pg_alter_system"),
        patterns: &["ALTER SYSTEM"],
    },
    Guardrail {
        name: "load",
        why: "LOAD loads a shared library into the server process",
        lifted_by: Some("pg_load_library"),
        patterns: &["LOAD"],
    },
];

/// `pattern` is `name` or `prefix*`; function names compare case-insensitively (erring towards
/// the guardrail).
fn function_pattern_matches(pattern: &str, function: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => function
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        None => function.eq_ignore_ascii_case(pattern),
    }
}

/// The guardrails `st` trips: (guardrail, pattern, the function an Allow rule must name).
pub fn tripped(st: &Statement) -> Vec<(&'static Guardrail, &'static str, &str)> {
    let mut out = Vec::new();
    for g in GUARDRAILS {
        match g.lifted_by {
            None => {
                for f in &st.functions {
                    if let Some(p) = g.patterns.iter().find(|p| function_pattern_matches(p, f)) {
                        out.push((g, *p, f.as_str()));
                    }
                }
            }
            Some(lift) => {
                let hit = match g.patterns[0] {
                    "COPY PROGRAM" => st.copy.is_some_and(|c| c.program),
                    "COPY FROM file" => st.copy.is_some_and(|c| c.file && c.from),
                    "COPY TO file" => st.copy.is_some_and(|c| c.file && !c.from),
                    "ALTER SYSTEM" => st.node == "AlterSystemStmt",
                    "LOAD" => st.node == "LoadStmt",
                    _ => false,
                };
                if hit {
                    out.push((g, g.patterns[0], lift));
                }
            }
        }
    }
    out
}

/// The outcome of deciding one operation.
#[derive(Clone, Copy, Debug)]
pub struct Decision<'a> {
    pub action: Action,
    pub cause: Cause<'a>,
}

impl<'a> Decision<'a> {
    /// Deny, for two RequireApproval rules that ask differently (see [`Cause::ApprovalConflict`]).
    pub fn approval_conflict(
        policy: &'a CompiledPolicy,
        rule: &'a CompiledRule,
        other_policy: &'a CompiledPolicy,
        other_rule: &'a CompiledRule,
    ) -> Self {
        Self {
            action: Action::Deny,
            cause: Cause::ApprovalConflict {
                policy,
                rule,
                other_policy,
                other_rule,
            },
        }
    }

    /// Stable label for metrics and recordings: allow, deny or require_approval.
    pub fn label(&self) -> &'static str {
        match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        }
    }

    /// `policy/rule`, or `None` when no rule matched (or a guardrail decided).
    pub fn rule_ref(&self) -> Option<String> {
        match self.cause {
            Cause::Rule { policy, rule } => Some(format!("{}/{}", policy.name, rule.name)),
            _ => None,
        }
    }

    /// The rule's description, when it has one.
    pub fn description(&self) -> Option<&str> {
        match self.cause {
            Cause::Rule { policy, rule } => policy
                .spec
                .rules
                .iter()
                .find(|r| r.name == rule.name)
                .and_then(|r| r.description.as_deref()),
            _ => None,
        }
    }

    /// One sentence for the client error, the log and the recording.
    pub fn explain(&self, op: &Operation<'_>) -> String {
        let what = op.summary();
        match self.cause {
            Cause::Rule { policy, rule } => {
                let verb = match self.action {
                    Action::Allow => "allowed",
                    Action::Deny => "denied",
                    Action::RequireApproval => "needs approval",
                };
                let mut s = format!(
                    "{what}: {verb} by rule {:?} of AccessPolicy {:?}",
                    rule.name, policy.name
                );
                if let Some(d) = self.description() {
                    s.push_str(": ");
                    s.push_str(d);
                }
                s
            }
            Cause::NoRuleMatched => {
                format!("{what}: denied: no rule of the AccessPolicies that apply allows it")
            }
            Cause::NoPolicy => {
                format!("{what}: denied: no AccessPolicy applies to this identity on this connection")
            }
            Cause::ApprovalConflict {
                policy,
                rule,
                other_policy,
                other_rule,
            } => format!(
                "{what}: denied: rule {:?} of AccessPolicy {:?} and rule {:?} of AccessPolicy {:?} both require approval, from different approvers or under different terms, and one approval cannot stand for the other; narrow the rules so that one applies",
                rule.name, policy.name, other_rule.name, other_policy.name
            ),
            Cause::Guardrail { name, detail } => {
                let tripped = match op {
                    Operation::Sql(q) => tripped(q.statement),
                    _ => Vec::new(),
                };
                match tripped.iter().find(|(g, p, _)| g.name == name && *p == detail) {
                    Some((g, _, lift)) if g.lifted_by.is_none() => format!(
                        "{what}: denied by the built-in guardrail {name}: {lift} {}; only an Allow rule that names {lift} in sql.functions lifts it",
                        g.why
                    ),
                    Some((g, _, lift)) => format!(
                        "{what}: denied by the built-in guardrail {name}: {}; only an Allow rule that names {lift} in sql.functions lifts it",
                        g.why
                    ),
                    None => format!("{what}: denied by the built-in guardrail {name} ({detail})"),
                }
            }
        }
    }
}

/// Whether two approval blocks ask alike: the same approvers (in any order), count, mode, grant
/// and timeout (however written: `1h` is `60m`).
fn ask_alike(a: Option<&ApprovalRule>, b: Option<&ApprovalRule>) -> bool {
    fn sorted(v: &[String]) -> Vec<&str> {
        let mut v: Vec<&str> = v.iter().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
    fn length(
        d: Option<&agentgate_crds::common::DurationString>,
    ) -> Option<Result<std::time::Duration, String>> {
        d.map(|d| agentgate_crds::common::parse_duration(&d.0))
    }
    match (a, b) {
        (Some(a), Some(b)) => {
            sorted(&a.approvers.users) == sorted(&b.approvers.users)
                && sorted(&a.approvers.groups) == sorted(&b.approvers.groups)
                && a.min_approvals == b.min_approvals
                && a.mode == b.mode
                && a.grant.r#type == b.grant.r#type
                && length(a.grant.duration.as_ref()) == length(b.grant.duration.as_ref())
                && length(a.timeout.as_ref()) == length(b.timeout.as_ref())
        }
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// Another RequireApproval rule that matches `op` and asks under other terms than `chosen`'s, if
/// one does (only read when approval is required, so the common decisions pay nothing for it).
fn asks_otherwise<'p>(
    policies: &'p [CompiledPolicy],
    lists: &[&[RuleRef]],
    chosen: RuleRef,
    op: &Operation<'_>,
    now: i64,
) -> Option<(&'p CompiledPolicy, &'p CompiledRule)> {
    let wanted = rank(Action::RequireApproval);
    let policy = &policies[chosen.policy as usize];
    let terms = crate::protocol::approval::rule_spec(policy, &policy.rules[chosen.rule as usize]);
    for list in lists {
        let start = list.partition_point(|r| r.rank < wanted);
        for r in list[start..].iter().take_while(|r| r.rank == wanted) {
            if (r.policy, r.rule) == (chosen.policy, chosen.rule) {
                continue;
            }
            let other_policy = &policies[r.policy as usize];
            let other = &other_policy.rules[r.rule as usize];
            if !ask_alike(crate::protocol::approval::rule_spec(other_policy, other), terms)
                && other.matcher.matches(other.action, op, now)
            {
                return Some((other_policy, other));
            }
        }
    }
    None
}

impl PolicyIndex {
    /// Files every rule of `policies`. `connections` are the names a `*` policy expands to.
    pub fn build<'c>(policies: &[CompiledPolicy], connections: impl IntoIterator<Item = &'c str>) -> Self {
        let all: Vec<&str> = connections.into_iter().collect();
        let mut index = PolicyIndex::default();
        for (pi, p) in policies.iter().enumerate() {
            let targets: Vec<&str> = if p.spec.connections.iter().any(|c| c == "*") {
                all.clone()
            } else {
                p.spec.connections.iter().map(String::as_str).collect()
            };
            for conn in targets {
                let ci = index.by_connection.entry(conn.to_string()).or_default();
                let buckets = (p.spec.subjects.identities.iter().map(|i| (true, i)))
                    .chain(p.spec.subjects.groups.iter().map(|g| (false, g)));
                for (is_identity, key) in buckets {
                    let map = if is_identity {
                        &mut ci.by_identity
                    } else {
                        &mut ci.by_group
                    };
                    let bucket = map.entry(key.clone()).or_default();
                    bucket.policies.push(pi as u32);
                    for (ri, rule) in p.rules.iter().enumerate() {
                        let r = RuleRef {
                            rank: rank(rule.action),
                            policy: pi as u32,
                            rule: ri as u32,
                        };
                        bucket.add(rule, r);
                    }
                }
            }
        }
        for ci in index.by_connection.values_mut() {
            ci.by_identity
                .values_mut()
                .chain(ci.by_group.values_mut())
                .for_each(Bucket::finish);
        }
        index
    }

    fn buckets<'a>(&'a self, connection: &str, subject: Subject<'_>) -> impl Iterator<Item = &'a Bucket> {
        let ci = self.by_connection.get(connection);
        let identity = ci.and_then(|c| c.by_identity.get(subject.identity));
        let groups = subject
            .groups
            .iter()
            .filter_map(move |g| ci.and_then(|c| c.by_group.get(g)));
        identity.into_iter().chain(groups)
    }

    /// Decides `op` by `subject` on `connection` at Unix time `now`: Deny beats RequireApproval
    /// beats Allow; within an action the first rule in configuration order explains the decision;
    /// nothing matched is Deny.
    pub fn decide<'p>(
        &self,
        policies: &'p [CompiledPolicy],
        connection: &str,
        subject: Subject<'_>,
        op: &Operation<'_>,
        now: i64,
    ) -> Decision<'p> {
        let mut lists: Vec<&[RuleRef]> = Vec::with_capacity(8);
        let mut any_policy = false;
        for b in self.buckets(connection, subject) {
            any_policy |= !b.policies.is_empty();
            b.candidates(op, &mut lists);
        }
        if let Operation::Sql(q) = op {
            for (g, pattern, lift) in tripped(q.statement) {
                let lifted = lists.iter().any(|list| {
                    let start = list.partition_point(|r| r.rank < rank(Action::Allow));
                    list[start..].iter().any(|r| {
                        let rule = &policies[r.policy as usize].rules[r.rule as usize];
                        matches!(&rule.matcher.matcher, Matcher::Sql(m) if m.names_function(lift))
                            && rule.matcher.matches(Action::Allow, op, now)
                    })
                });
                if !lifted {
                    return Decision {
                        action: Action::Deny,
                        cause: Cause::Guardrail {
                            name: g.name,
                            detail: pattern,
                        },
                    };
                }
            }
        }
        for wanted in 0..3u8 {
            let mut best: Option<RuleRef> = None;
            for list in &lists {
                let start = list.partition_point(|r| r.rank < wanted);
                for r in &list[start..] {
                    if r.rank != wanted || best.is_some_and(|b| b <= *r) {
                        break;
                    }
                    let rule = &policies[r.policy as usize].rules[r.rule as usize];
                    if rule.matcher.matches(rule.action, op, now) {
                        best = Some(*r);
                        break;
                    }
                }
            }
            if let Some(r) = best {
                let policy = &policies[r.policy as usize];
                let rule = &policy.rules[r.rule as usize];
                if rule.action == Action::RequireApproval
                    && let Some((other_policy, other_rule)) = asks_otherwise(policies, &lists, r, op, now)
                {
                    return Decision::approval_conflict(policy, rule, other_policy, other_rule);
                }
                return Decision {
                    action: rule.action,
                    cause: Cause::Rule { policy, rule },
                };
            }
        }
        Decision {
            action: Action::Deny,
            cause: if any_policy {
                Cause::NoRuleMatched
            } else {
                Cause::NoPolicy
            },
        }
    }

    /// Whether any policy names `subject` on `connection` (used to allow API discovery requests).
    pub fn has_policy(&self, connection: &str, subject: Subject<'_>) -> bool {
        self.buckets(connection, subject).any(|b| !b.policies.is_empty())
    }

    /// The policies that apply to `subject` on `connection`, each once, in configuration order:
    /// their masking rules all apply.
    pub fn applicable<'p>(
        &self,
        policies: &'p [CompiledPolicy],
        connection: &str,
        subject: Subject<'_>,
    ) -> Vec<&'p CompiledPolicy> {
        let mut ids: Vec<u32> = self
            .buckets(connection, subject)
            .flat_map(|b| b.policies.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| &policies[i as usize]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BodyParams, BodyView, HttpOperation};
    use hyper::http::HeaderMap;

    fn policy(name: &str, yaml: &str) -> CompiledPolicy {
        CompiledPolicy::from_spec(name, serde_saphyr::from_str(yaml).unwrap()).unwrap()
    }

    fn get<'a>(method: &'a str, path: &'a str, h: &'a HeaderMap) -> Operation<'a> {
        Operation::Http(HttpOperation {
            method,
            path,
            query: &[],
            headers: h,
            body: BodyView::NotRead,
            params: BodyParams::None,
        })
    }

    fn okta() -> Vec<CompiledPolicy> {
        vec![
            policy(
                "okta",
                "subjects: {identities: [ci-agent]}\nconnections: [okta]\nrules:\n\
                 - {name: read, action: Allow, http: {methods: [GET], paths: ['/api/v1/users/**', /api/v1/users]}}\n\
                 - name: admin\n  action: RequireApproval\n  http: {methods: [POST, DELETE], paths: ['/api/v1/users/**', /api/v1/users]}\n  approval: {approvers: {groups: [ops]}}\n\
                 - {name: no-tokens, action: Deny, description: never, http: {paths: ['/api/v1/api-tokens/**', '/api/v1/api-tok*']}}\n",
            ),
            policy(
                "everyone-reads-groups",
                "subjects: {groups: [ai-agents]}\nconnections: ['*']\nrules:\n\
                 - {name: groups, action: Allow, http: {methods: [GET], paths: ['/api/v1/groups']}}\n\
                 - {name: no-deletes, action: Deny, http: {methods: [DELETE]}}\n",
            ),
        ]
    }

    #[test]
    fn restricting_rules_ignore_case_and_a_trailing_slash_allow_rules_do_not() {
        let policies = vec![policy(
            "p",
            "subjects: {identities: [a]}\nconnections: [c]\nrules:\n\
             - {name: reads, action: Allow, http: {paths: ['/api/**']}}\n\
             - {name: no-user-deletes, action: Deny, http: {methods: [DELETE], paths: ['/api/v1/users/*']}}\n\
             - {name: no-Keys, action: Deny, http: {paths: ['/API/v1/Keys']}}\n\
             - {name: exact, action: Allow, http: {paths: ['/other/Thing']}}\n\
             - {name: slashed, action: Deny, http: {paths: ['/api/v1/trailing/']}}\n",
        )];
        let index = PolicyIndex::build(&policies, ["c"]);
        let h = HeaderMap::new();
        let who = Subject {
            identity: "a",
            groups: &[],
        };
        let decide = |m: &str, path: &str| {
            let d = index.decide(&policies, "c", who, &get(m, path, &h), 0);
            (d.action, d.rule_ref())
        };
        let denied = |rule: &str| (Action::Deny, Some(format!("p/{rule}")));
        for path in [
            "/api/v1/users/00u1",
            "/api/v1/users/00u1/",
            "/api/v1/Users/00u1",
            "/API/V1/USERS/00u1//",
        ] {
            assert_eq!(decide("DELETE", path), denied("no-user-deletes"), "{path}");
        }
        for path in ["/api/v1/keys", "/Api/V1/keys/", "/API/v1/Keys"] {
            assert_eq!(decide("GET", path), denied("no-Keys"), "{path}");
        }
        assert_eq!(decide("GET", "/api/v1/Users/00u1").0, Action::Allow);
        // A format suffix, and a slash a rule has and the path lacks, are folded too.
        for path in ["/api/v1/keys.json", "/API/v1/Keys.XML/", "/api/v1/trailing"] {
            assert_eq!(decide("GET", path).0, Action::Deny, "{path}");
        }
        // Any suffix Rails or Spring reads as a format: past eight characters, with `_`, `-`,
        // `~`, or dots of its own.
        for path in [
            "/api/v1/keys.a_b",
            "/api/v1/keys.json-",
            "/api/v1/keys.abcdefghijk",
            "/api/v1/keys.a.b",
            "/api/v1/keys.",
        ] {
            assert_eq!(decide("GET", path), denied("no-Keys"), "{path}");
        }
        assert_eq!(
            decide("DELETE", "/api/v1/users/00uADMIN.json"),
            denied("no-user-deletes")
        );
        assert_eq!(
            decide("GET", "/api/v1/keys.d/x").0,
            Action::Allow,
            "only the last segment's suffix"
        );
        // An Allow rule matches the path as forwarded, case and slash included.
        assert_eq!(decide("GET", "/other/Thing").0, Action::Allow);
        assert_eq!(decide("GET", "/other/thing").0, Action::Deny);
        assert_eq!(decide("GET", "/other/Thing/").0, Action::Deny);
    }

    #[test]
    fn deny_overrides_and_explains() {
        let policies = okta();
        let index = PolicyIndex::build(&policies, ["okta", "other"]);
        let h = HeaderMap::new();
        let groups = vec!["ai-agents".to_string()];
        let who = Subject {
            identity: "ci-agent",
            groups: &groups,
        };
        let d = index.decide(&policies, "okta", who, &get("GET", "/api/v1/users/00u1", &h), 0);
        assert_eq!(
            (d.action, d.rule_ref().as_deref()),
            (Action::Allow, Some("okta/read"))
        );
        let d = index.decide(&policies, "okta", who, &get("POST", "/api/v1/users", &h), 0);
        assert_eq!(
            (d.action, d.rule_ref().as_deref()),
            (Action::RequireApproval, Some("okta/admin"))
        );
        // DELETE matches both RequireApproval (okta/admin) and Deny (group policy): Deny wins.
        let d = index.decide(
            &policies,
            "okta",
            who,
            &get("DELETE", "/api/v1/users/00u1", &h),
            0,
        );
        assert_eq!(
            (d.action, d.rule_ref().as_deref()),
            (Action::Deny, Some("everyone-reads-groups/no-deletes"))
        );
        let op = get("GET", "/api/v1/api-tokens", &h);
        let d = index.decide(&policies, "okta", who, &op, 0);
        assert_eq!(
            (d.action, d.rule_ref().as_deref()),
            (Action::Deny, Some("okta/no-tokens"))
        );
        assert!(d.explain(&op).contains("never"), "{}", d.explain(&op));
        // Nothing matched: Deny, explained as such.
        let d = index.decide(&policies, "okta", who, &get("GET", "/api/v1/apps", &h), 0);
        assert!(matches!(d.cause, Cause::NoRuleMatched) && d.action == Action::Deny);
        // A `*` policy covers the other connection; the identity's own policy does not.
        let d = index.decide(&policies, "other", who, &get("GET", "/api/v1/groups", &h), 0);
        assert_eq!(d.action, Action::Allow);
        let d = index.decide(&policies, "other", who, &get("GET", "/api/v1/users", &h), 0);
        assert_eq!(d.action, Action::Deny);
        // Without the group, nothing applies on `other`.
        let alone = Subject {
            identity: "ci-agent",
            groups: &[],
        };
        let d = index.decide(&policies, "other", alone, &get("GET", "/api/v1/groups", &h), 0);
        assert!(matches!(d.cause, Cause::NoPolicy));
        assert!(!index.has_policy("other", alone) && index.has_policy("okta", alone));
        assert_eq!(index.applicable(&policies, "okta", who).len(), 2);
    }

    /// An operation two approval rules match, asking different approvers or under different
    /// grants, is refused: asking under the first would let its approvers stand in for the
    /// other's. Rules that ask alike are one question, asked under the first.
    #[test]
    fn approval_rules_that_ask_differently_refuse_together() {
        let policies = vec![
            policy(
                "ops",
                "subjects: {identities: [a]}\nconnections: [c]\nrules:\n\
                 - name: writes\n  action: RequireApproval\n  http: {methods: [DELETE], paths: ['/api/**']}\n  \
                 approval: {approvers: {groups: [oncall]}, grant: {type: Window, duration: 1h}}\n\
                 - name: reads\n  action: RequireApproval\n  http: {methods: [GET], paths: ['/api/**']}\n  \
                 approval: {approvers: {groups: [security, audit]}, timeout: 1h}\n",
            ),
            policy(
                "security",
                "subjects: {identities: [a]}\nconnections: [c]\nrules:\n\
                 - name: admins\n  action: RequireApproval\n  http: {methods: [DELETE, GET], paths: ['/api/v1/users/admin*']}\n  \
                 approval: {approvers: {groups: [audit, security]}, timeout: 60m}\n",
            ),
        ];
        let index = PolicyIndex::build(&policies, ["c"]);
        let h = HeaderMap::new();
        let who = Subject {
            identity: "a",
            groups: &[],
        };
        let op = get("DELETE", "/api/v1/users/admin1", &h);
        let d = index.decide(&policies, "c", who, &op, 0);
        assert_eq!(d.action, Action::Deny);
        assert_eq!(
            d.explain(&op),
            "DELETE /api/v1/users/admin1: denied: rule \"writes\" of AccessPolicy \"ops\" and rule \"admins\" of AccessPolicy \"security\" both require approval, from different approvers or under different terms, and one approval cannot stand for the other; narrow the rules so that one applies"
        );
        // Only one approval rule matches: asked as it says.
        let d = index.decide(&policies, "c", who, &get("DELETE", "/api/v1/groups/g1", &h), 0);
        assert_eq!(
            (d.action, d.rule_ref().as_deref()),
            (Action::RequireApproval, Some("ops/writes"))
        );
        // Two that ask alike, however their terms are spelled: one question, under the first.
        let d = index.decide(&policies, "c", who, &get("GET", "/api/v1/users/admin1", &h), 0);
        assert_eq!(
            (d.action, d.rule_ref().as_deref()),
            (Action::RequireApproval, Some("ops/reads"))
        );
    }

    #[test]
    fn the_first_rule_in_configuration_order_explains() {
        let policies = vec![policy(
            "p",
            "subjects: {identities: [a]}\nconnections: [c]\nrules:\n\
             - {name: broad, action: Allow, http: {paths: ['/**']}}\n\
             - {name: narrow, action: Allow, http: {paths: ['/x/y']}}\n",
        )];
        let index = PolicyIndex::build(&policies, ["c"]);
        let h = HeaderMap::new();
        let who = Subject {
            identity: "a",
            groups: &[],
        };
        let d = index.decide(&policies, "c", who, &get("GET", "/x/y", &h), 0);
        assert_eq!(d.rule_ref().as_deref(), Some("p/broad"));
        let d = index.decide(&policies, "c", who, &get("GET", "/", &h), 0);
        assert_eq!(d.rule_ref().as_deref(), Some("p/broad"));
    }

    #[test]
    fn partial_segment_globs_are_filed_at_their_whole_segments() {
        let policies = vec![policy(
            "p",
            "subjects: {identities: [a]}\nconnections: [c]\nrules:\n\
             - {name: r, action: Allow, http: {paths: ['/api/v1/us*/*', '/api/v2/']}}\n",
        )];
        let index = PolicyIndex::build(&policies, ["c"]);
        let h = HeaderMap::new();
        let who = Subject {
            identity: "a",
            groups: &[],
        };
        for (path, allowed) in [
            ("/api/v1/users/1", true),
            ("/api/v1/usage/2", true),
            ("/api/v1/x/1", false),
            ("/api/v2/", true),
            ("/api/v2", false),
        ] {
            let d = index.decide(&policies, "c", who, &get("GET", path, &h), 0);
            assert_eq!(d.action == Action::Allow, allowed, "{path}");
        }
    }

    fn sql_decide<'p>(
        index: &PolicyIndex,
        policies: &'p [CompiledPolicy],
        st: &Statement,
    ) -> (Decision<'p>, String) {
        let who = Subject {
            identity: "agent",
            groups: &[],
        };
        let op = Operation::Sql(crate::policy::operation::SqlOperation { statement: st });
        let d = index.decide(policies, "db", who, &op, 0);
        let explained = d.explain(&op);
        (d, explained)
    }

    fn statement(sql: &str) -> Statement {
        let mut c = crate::protocol::postgres::classify::classify(sql).unwrap();
        assert_eq!(c.statements.len(), 1, "{sql}");
        c.statements.remove(0)
    }

    fn sql_policies(rules: &str) -> (Vec<CompiledPolicy>, PolicyIndex) {
        let policies = vec![policy(
            "sql",
            &format!("subjects: {{identities: [agent]}}\nconnections: [db]\nrules:\n{rules}"),
        )];
        let index = PolicyIndex::build(&policies, ["db"]);
        (policies, index)
    }

    #[test]
    fn sql_rules_are_filed_by_statement_kind() {
        let (policies, index) = sql_policies(
            "- {name: reads, action: Allow, sql: {statements: [Select], tables: ['*'], rowLimit: 100}}\n\
             - {name: no-deletes, action: Deny, sql: {statements: [Delete]}}\n\
             - {name: migrations, action: RequireApproval, sql: {statements: [Ddl]}, approval: {approvers: {groups: [dba]}}}\n\
             - {name: read-only, action: Deny, sql: {writes: true}}\n",
        );
        let decide = |sql: &str| {
            let st = statement(sql);
            let (d, _) = sql_decide(&index, &policies, &st);
            (d.action, d.rule_ref())
        };
        assert_eq!(
            decide("SELECT * FROM orders"),
            (Action::Allow, Some("sql/reads".into()))
        );
        // The DELETE inside the SELECT reaches the rule filed under Delete.
        assert_eq!(
            decide("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d"),
            (Action::Deny, Some("sql/no-deletes".into()))
        );
        // Ddl files the rule under every DDL kind.
        assert_eq!(
            decide("DROP TABLE t"),
            (Action::Deny, Some("sql/read-only".into()))
        );
        assert_eq!(
            decide("SELECT nextval('s')"),
            (Action::Deny, Some("sql/read-only".into()))
        );
        // Nothing allows SHOW: denied, no rule matched.
        let st = statement("SHOW work_mem");
        let (d, _) = sql_decide(&index, &policies, &st);
        assert!(matches!(d.cause, Cause::NoRuleMatched));
        let st = statement("SELECT * FROM orders");
        let (d, explained) = sql_decide(&index, &policies, &st);
        assert!(
            explained.starts_with("Select SELECT * FROM orders: allowed by rule"),
            "{explained}"
        );
        let Cause::Rule { rule, .. } = d.cause else {
            panic!()
        };
        assert_eq!(rule.matcher.row_limit(), Some(100));
        let (policies, index) = sql_policies(
            "- {name: ddl, action: RequireApproval, sql: {statements: [Ddl]}, approval: {approvers: {groups: [dba]}}}\n",
        );
        let st = statement("ALTER TABLE t ADD COLUMN c int");
        assert_eq!(
            sql_decide(&index, &policies, &st).0.action,
            Action::RequireApproval
        );
    }

    #[test]
    fn guardrails_come_first_and_only_a_named_function_lifts_them() {
        let (policies, index) = sql_policies(
            "- {name: everything, action: Allow, sql: {}}\n\
             - {name: files-by-glob, action: Allow, sql: {functions: ['pg_*']}}\n",
        );
        for sql in [
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT * FROM pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT ext.dblink('host=x', 'DELETE FROM t')",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "SELECT query_to_xml('SELECT * FROM secret', true, false, '')",
            "EXPLAIN ANALYZE SELECT pg_read_file('/x')",
            "PREPARE p AS SELECT pg_read_file($1)",
            "COPY t FROM PROGRAM 'id'",
            "COPY t TO PROGRAM 'id'",
            "COPY t FROM '/etc/passwd'",
            "COPY t TO '/tmp/x'",
            "ALTER SYSTEM SET archive_command = 'id'",
            "LOAD '/tmp/evil.so'",
        ] {
            let st = statement(sql);
            let (d, explained) = sql_decide(&index, &policies, &st);
            assert_eq!(d.action, Action::Deny, "{sql}");
            assert!(matches!(d.cause, Cause::Guardrail { .. }), "{sql}");
            assert!(explained.contains("built-in guardrail"), "{explained}");
            assert_eq!(d.rule_ref(), None);
        }
        let st = statement("SELECT pg_read_file('/etc/passwd')");
        let (_, explained) = sql_decide(&index, &policies, &st);
        assert!(
            explained.contains("guardrail dangerous-function: pg_read_file")
                && explained.contains("names pg_read_file in sql.functions"),
            "{explained}"
        );
        // COPY from STDIN is no server file.
        let st = statement("COPY t FROM STDIN");
        assert_eq!(sql_decide(&index, &policies, &st).0.action, Action::Allow);

        // Named exactly, by an Allow rule that matches the statement: lifted, and the decision
        // goes on as usual (Deny rules still apply).
        let (policies, index) = sql_policies(
            "- {name: logs, action: Allow, sql: {statements: [Select], functions: [pg_read_file, pg_ls_dir]}}\n\
             - {name: import, action: Allow, sql: {statements: [Copy], tables: [staging], functions: [pg_execute_server_program]}}\n\
             - {name: no-passwd, action: Deny, sql: {functions: [pg_ls_dir]}}\n",
        );
        let decide = |sql: &str| {
            let st = statement(sql);
            let (d, _) = sql_decide(&index, &policies, &st);
            (d.action, d.rule_ref())
        };
        assert_eq!(
            decide("SELECT pg_read_file('/var/log/x')"),
            (Action::Allow, Some("sql/logs".into()))
        );
        assert_eq!(
            decide("SELECT pg_ls_dir('/')"),
            (Action::Deny, Some("sql/no-passwd".into()))
        );
        // The naming rule must match the whole statement: another function is not listed.
        assert_eq!(decide("SELECT pg_read_file('/x'), lower('a')").1, None);
        // Naming one dangerous function does not lift another.
        assert_eq!(decide("SELECT pg_read_file('/x'), pg_stat_file('/x')").1, None);
        assert_eq!(
            decide("COPY staging FROM PROGRAM 'cat /data/x.csv'"),
            (Action::Allow, Some("sql/import".into()))
        );
        assert_eq!(decide("COPY orders FROM PROGRAM 'id'").1, None);
        assert_eq!(decide("COPY staging TO '/tmp/x'").1, None);
    }

    #[test]
    fn kubernetes_rules_are_filed_by_resource() {
        use crate::policy::KubernetesOperation;
        use agentgate_crds::policy::KubernetesVerb;
        let policies = vec![policy(
            "k",
            "subjects: {identities: [a]}\nconnections: [k8s]\nrules:\n\
             - {name: read-pods, action: Allow, kubernetes: {verbs: [get, list], resources: [pods, services]}}\n\
             - {name: no-exec, action: Deny, kubernetes: {resources: ['*'], subresources: [exec, attach]}}\n",
        )];
        let index = PolicyIndex::build(&policies, ["k8s"]);
        let who = Subject {
            identity: "a",
            groups: &[],
        };
        let op = |resource, subresource| {
            Operation::Kubernetes(KubernetesOperation {
                verb: KubernetesVerb::Get,
                api_group: "",
                api_version: "v1",
                resource,
                subresource,
                namespace: Some("default"),
                name: Some("x"),
            })
        };
        assert_eq!(
            index.decide(&policies, "k8s", who, &op("pods", None), 0).action,
            Action::Allow
        );
        assert_eq!(
            index
                .decide(&policies, "k8s", who, &op("services", None), 0)
                .action,
            Action::Allow
        );
        assert_eq!(
            index
                .decide(&policies, "k8s", who, &op("secrets", None), 0)
                .action,
            Action::Deny
        );
        let d = index.decide(&policies, "k8s", who, &op("pods", Some("exec")), 0);
        assert_eq!(d.rule_ref().as_deref(), Some("k/no-exec"));
    }

    /// The index is an optimization only: on random policies (subjects, connections, `*`,
    /// actions, method lists, path globs with `*`, `**` and partial segments, Kubernetes rules,
    /// SQL rules by statement kind and table) and random operations, it decides exactly as scanning every rule of every applicable
    /// policy in configuration order would, down to the rule that explains the decision.
    #[test]
    fn the_index_decides_as_a_scan_of_every_rule_would() {
        use crate::policy::KubernetesOperation;
        use agentgate_crds::policy::KubernetesVerb;
        use serde_json::json;

        const CONNECTIONS: [&str; 2] = ["c1", "c2"];
        let path_segments = [
            "api",
            "v1",
            "users",
            "groups",
            "00u1",
            "lifecycle",
            "api-tokens",
            "a.b",
            "",
        ];
        let glob_segments = [
            "api",
            "v1",
            "users",
            "groups",
            "00u1",
            "lifecycle",
            "*",
            "**",
            "u*",
            "*s",
            "api-tok*",
            "a.*",
        ];
        let methods = ["GET", "POST", "DELETE", "PUT"];
        let verbs = ["get", "list", "create", "delete", "*"];
        let resources = ["pods", "secrets", "deployments", "*"];
        let subresources = ["exec", "status", "*"];
        let kinds = [
            "Select",
            "Insert",
            "Update",
            "Delete",
            "Ddl",
            "Drop",
            "Explain",
            "ExplainAnalyze",
        ];
        let tables = ["public.t", "s.*", "*.u", "*"];
        // Statements that trip no guardrail, so the scan below needs none.
        let statements: Vec<Statement> = [
            "SELECT * FROM t",
            "SELECT * FROM s.x JOIN u ON true",
            "UPDATE t SET a = 1",
            "DELETE FROM s.x WHERE a = 1",
            "WITH d AS (DELETE FROM u RETURNING *) SELECT * FROM d",
            "INSERT INTO t SELECT * FROM s.x",
            "DROP TABLE u",
            "EXPLAIN ANALYZE UPDATE t SET a = 2 WHERE false",
        ]
        .iter()
        .map(|sql| statement(sql))
        .collect();
        assert!(statements.iter().all(|st| tripped(st).is_empty()));

        // What `decide` must equal: every rule of every policy that applies, strongest action
        // first, then configuration order.
        fn scan(
            policies: &[CompiledPolicy],
            connection: &str,
            who: Subject<'_>,
            op: &Operation<'_>,
        ) -> (Action, Option<String>, &'static str) {
            let mut best: Option<(u8, usize, usize)> = None;
            let mut any_policy = false;
            for (pi, p) in policies.iter().enumerate() {
                let conns = &p.spec.connections;
                let on_connection = conns.iter().any(|c| c == connection)
                    || (conns.iter().any(|c| c == "*") && CONNECTIONS.contains(&connection));
                let names = p.spec.subjects.identities.iter().any(|i| i == who.identity)
                    || p.spec.subjects.groups.iter().any(|g| who.groups.contains(g));
                if !(on_connection && names) {
                    continue;
                }
                any_policy = true;
                for (ri, r) in p.rules.iter().enumerate() {
                    let key = (rank(r.action), pi, ri);
                    if r.matcher.matches(r.action, op, 0) && best.is_none_or(|b| key < b) {
                        best = Some(key);
                    }
                }
            }
            // Approval rules that ask under other terms than the chosen one refuse together.
            let terms = |pi: usize, ri: usize| {
                let (p, r) = (&policies[pi], &policies[pi].rules[ri]);
                p.spec
                    .rules
                    .iter()
                    .find(|s| s.name == r.name)
                    .and_then(|s| s.approval.clone())
            };
            let applies = |p: &CompiledPolicy| {
                let conns = &p.spec.connections;
                (conns.iter().any(|c| c == connection)
                    || (conns.iter().any(|c| c == "*") && CONNECTIONS.contains(&connection)))
                    && (p.spec.subjects.identities.iter().any(|i| i == who.identity)
                        || p.spec.subjects.groups.iter().any(|g| who.groups.contains(g)))
            };
            match best {
                Some((_, pi, ri)) if policies[pi].rules[ri].action == Action::RequireApproval => {
                    let conflict = policies
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| applies(p))
                        .any(|(pj, p)| {
                            p.rules.iter().enumerate().any(|(rj, r)| {
                                r.action == Action::RequireApproval
                                    && !ask_alike(terms(pj, rj).as_ref(), terms(pi, ri).as_ref())
                                    && r.matcher.matches(r.action, op, 0)
                            })
                        });
                    let (p, r) = (&policies[pi], &policies[pi].rules[ri]);
                    if conflict {
                        (Action::Deny, None, "ApprovalConflict")
                    } else {
                        (r.action, Some(format!("{}/{}", p.name, r.name)), "Rule")
                    }
                }
                Some((_, pi, ri)) => {
                    let (p, r) = (&policies[pi], &policies[pi].rules[ri]);
                    (r.action, Some(format!("{}/{}", p.name, r.name)), "Rule")
                }
                None if any_policy => (Action::Deny, None, "NoRuleMatched"),
                None => (Action::Deny, None, "NoPolicy"),
            }
        }

        let mut rng = crate::mutate::Mutator::new(42);
        let mut decided = [0usize; 3];
        let mut conflicts = 0usize;
        for case in 0..250 * crate::mutate::scale() {
            let mut policies = Vec::new();
            for pi in 0..1 + rng.below(5) {
                let mut rules = Vec::new();
                for ri in 0..1 + rng.below(5) {
                    let action = rng.pick(&["Allow", "Allow", "Deny", "RequireApproval"]);
                    let mut rule = json!({"name": format!("r{ri}"), "action": action});
                    if action == "RequireApproval" {
                        // Overlapping approval rules both agree and conflict.
                        let group = rng.pick(&["ops", "security"]);
                        rule["approval"] = json!({"approvers": {"groups": [group]}});
                    }
                    if rng.below(4) == 0 {
                        rule["sql"] = json!({
                            "statements": rng.subset(&kinds),
                            "tables": rng.subset(&tables),
                            "withoutWhere": rng.below(4) == 0,
                        });
                    } else if rng.below(3) == 0 {
                        rule["kubernetes"] = json!({
                            "verbs": rng.subset(&verbs),
                            "resources": rng.subset(&resources),
                            "subresources": rng.subset(&subresources),
                        });
                    } else {
                        let paths: Vec<String> = (0..rng.below(3))
                            .map(|_| {
                                let n = 1 + rng.below(4);
                                let segs: Vec<&str> = (0..n).map(|_| rng.pick(&glob_segments)).collect();
                                format!("/{}", segs.join("/"))
                            })
                            .collect();
                        rule["http"] = json!({"methods": rng.subset(&methods), "paths": paths});
                    }
                    rules.push(rule);
                }
                let mut identities = rng.subset(&["a", "b"]);
                let groups = rng.subset(&["g1", "g2"]);
                if identities.is_empty() && groups.is_empty() {
                    identities.push("a");
                }
                let mut connections = rng.subset(&["c1", "c2", "*"]);
                if connections.is_empty() {
                    connections.push("c1");
                }
                let spec = json!({
                    "subjects": {"identities": identities, "groups": groups},
                    "connections": connections,
                    "rules": rules,
                });
                let spec = serde_json::from_value(spec).expect("a well-formed spec");
                // Globs the compiler refuses (such as `**` in the middle) leave the policy out.
                if let Ok(p) = CompiledPolicy::from_spec(&format!("p{pi}"), spec) {
                    policies.push(p);
                }
            }
            let index = PolicyIndex::build(&policies, CONNECTIONS);
            let headers = HeaderMap::new();
            for _ in 0..40 {
                let identity = rng.pick(&["a", "b", "z"]);
                let groups: Vec<String> = rng
                    .subset(&["g1", "g2", "g3"])
                    .into_iter()
                    .map(String::from)
                    .collect();
                let who = Subject {
                    identity,
                    groups: &groups,
                };
                let connection = rng.pick(&["c1", "c2", "c3"]);
                let path = format!(
                    "/{}",
                    (0..rng.below(5))
                        .map(|_| rng.pick(&path_segments))
                        .collect::<Vec<_>>()
                        .join("/")
                );
                let op = if rng.below(4) == 0 {
                    Operation::Sql(crate::policy::operation::SqlOperation {
                        statement: &statements[rng.below(statements.len())],
                    })
                } else if rng.below(3) == 0 {
                    Operation::Kubernetes(KubernetesOperation {
                        verb: *rng.pick(&[
                            &KubernetesVerb::Get,
                            &KubernetesVerb::List,
                            &KubernetesVerb::Delete,
                        ]),
                        api_group: "",
                        api_version: "v1",
                        resource: rng.pick(&["pods", "secrets", "deployments"]),
                        subresource: if rng.below(2) == 0 {
                            None
                        } else {
                            Some(rng.pick(&["exec", "status"]))
                        },
                        namespace: Some("default"),
                        name: Some("x"),
                    })
                } else {
                    get(rng.pick(&methods), &path, &headers)
                };
                let got = index.decide(&policies, connection, who, &op, 0);
                let (action, rule, cause) = scan(&policies, connection, who, &op);
                let context = || {
                    format!(
                        "case {case}: {} by {identity} {groups:?} on {connection}",
                        op.summary()
                    )
                };
                assert_eq!(got.action, action, "{}", context());
                assert_eq!(got.rule_ref(), rule, "{}", context());
                assert!(format!("{:?}", got.cause).starts_with(cause), "{}", context());
                conflicts += usize::from(cause == "ApprovalConflict");
                decided[rank(action) as usize] += 1;
            }
        }
        // The random cases reach every outcome, many times.
        assert!(decided.iter().all(|&n| n > 500), "{decided:?}");
        assert!(conflicts > 10, "{conflicts} approval conflicts");
    }
}
