//! The resource state machine: is a resource up for a package?
//!
//! A package's `[[resource]]` entry names a resource, an `up` criterion
//! (`== up`, `< 90`, `> 5 and < 10`, or a list of such, OR'd) and `rise` /
//! `fall` counts. [`Criteria`] judges one sample good or bad, [`Hysteresis`]
//! turns a run of judgements into a state (`up`, `down` or `unknown`), and
//! [`Tracker`] does both for every (package, resource) pair at once, indexed
//! by resource name.
//!
//! This module is pure: no I/O, no clock, no channels. It does not decide
//! what to do about a transition (the package manager does) and does not
//! order samples by time (the registry hands them over in arrival order).
//!
//! # Comparison rules
//!
//! * An operand that reads as a finite number (`90`, `-1.5`, `1e3`) is a
//!   number and compares only against numeric values, ignoring their unit.
//!   Anything else (a bare word, or any `"quoted text"`) is text and compares
//!   only against text values, case-sensitively, with `==` and `!=`.
//! * `<`, `<=`, `>`, `>=` need a number: `< up` is a parse error, so a typo
//!   is caught by `vigil check` rather than silently never being up.
//! * A value of the other kind satisfies nothing, not even `!=`: `!= 5`
//!   against the text `n/a` is not satisfied. A mismatch means the resource
//!   is not what the package expects, which must not count as up.
//! * An unknown sample (value `None`) satisfies nothing.
//! * When a package gives no `up`, the criterion is `== up`
//!   ([`Criteria::default`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use vigil_sdk::{ResourceName, Sample, Value};

/// A criterion that could not be read, naming the expression and the column
/// (1-based, in characters) where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriteriaError {
    /// `message` ends with `at column N`, and says what was found there.
    #[error("in {expr:?}: {message}")]
    Syntax {
        expr: String,
        column: usize,
        message: String,
    },
    #[error("empty list of criteria: the resource could never be up")]
    EmptyList,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, Op::Eq | Op::Ne)
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Number(f64),
    Text(String),
}

/// One comparison, `< 90` or `== up`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub op: Op,
    pub operand: Operand,
}

impl Comparison {
    /// True when `value` satisfies the comparison (see the module docs).
    pub fn is_satisfied_by(&self, value: Option<&Value>) -> bool {
        match (&self.operand, value) {
            (Operand::Number(right), Some(Value::Number { value, .. })) => {
                value.is_finite() && self.op.holds(*value, *right)
            }
            (Operand::Text(right), Some(Value::Text(text))) => match self.op {
                Op::Eq => text == right,
                Op::Ne => text != right,
                // The parser refuses ordering operators with text operands.
                _ => false,
            },
            _ => false,
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.op.as_str())?;
        match &self.operand {
            Operand::Number(n) => write!(f, "{n}"),
            Operand::Text(t) if needs_quotes(t) => {
                f.write_str("\"")?;
                for c in t.chars() {
                    if matches!(c, '"' | '\\') {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            Operand::Text(t) => f.write_str(t),
        }
    }
}

/// Text that would not read back as the same bare word.
fn needs_quotes(text: &str) -> bool {
    text.is_empty()
        || text == "and"
        || parse_number(text).is_some()
        || text.starts_with(['"', '=', '!', '<', '>'])
        || text.contains(char::is_whitespace)
}

/// Only plain decimal notation counts as a number: `inf` and `nan` are words.
fn parse_number(text: &str) -> Option<f64> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !plain || !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A conjunction of comparisons: `> 5 and < 10`.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    pub all: Vec<Comparison>,
}

impl Criterion {
    /// Reads `OP VALUE [and OP VALUE]...`. A value is a number, a bare word,
    /// or `"quoted text"` (with `\"` and `\\`), which is always text.
    pub fn parse(expr: &str) -> Result<Self, CriteriaError> {
        Parser { expr, pos: 0 }.criterion()
    }

    pub fn is_satisfied_by(&self, value: Option<&Value>) -> bool {
        self.all.iter().all(|c| c.is_satisfied_by(value))
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, comparison) in self.all.iter().enumerate() {
            if i > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{comparison}")?;
        }
        Ok(())
    }
}

const OPERATORS: &str = "an operator (==, !=, <, <=, >, >=)";

struct Parser<'a> {
    expr: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.expr[self.pos..]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn error(&self, at: usize, message: String) -> CriteriaError {
        let column = self.expr[..at].chars().count() + 1;
        CriteriaError::Syntax {
            expr: self.expr.to_owned(),
            column,
            message: format!("{message} at column {column}"),
        }
    }

    /// Like [`Parser::error`], saying what was found at `at` instead.
    fn unexpected(&self, at: usize, expected: String) -> CriteriaError {
        let mut error = self.error(at, expected);
        if let CriteriaError::Syntax { message, .. } = &mut error {
            message.push_str(", found ");
            message.push_str(&self.found(at));
        }
        error
    }

    /// What stands at `at`, for messages: the next word, or the end.
    fn found(&self, at: usize) -> String {
        let word = self.expr[at..].split_whitespace().next();
        word.map_or_else(|| "end of expression".to_owned(), |w| format!("{w:?}"))
    }

    fn criterion(mut self) -> Result<Criterion, CriteriaError> {
        let mut all = Vec::new();
        loop {
            self.skip_whitespace();
            let op = self.operator()?;
            self.skip_whitespace();
            let operand = self.operand(op)?;
            all.push(Comparison { op, operand });
            self.skip_whitespace();
            if self.rest().is_empty() {
                return Ok(Criterion { all });
            }
            let at = self.pos;
            let word_end = self.rest().find(|c: char| !c.is_ascii_alphabetic());
            let word = &self.rest()[..word_end.unwrap_or(self.rest().len())];
            if word != "and" {
                let hint = if word.eq_ignore_ascii_case("or") {
                    " (for 'or', give a list of criteria)"
                } else {
                    ""
                };
                return Err(self.unexpected(at, format!("expected 'and'{hint}")));
            }
            self.pos += word.len();
        }
    }

    fn operator(&mut self) -> Result<Op, CriteriaError> {
        let rest = self.rest();
        let (op, len) = if rest.starts_with("==") {
            (Op::Eq, 2)
        } else if rest.starts_with("!=") {
            (Op::Ne, 2)
        } else if rest.starts_with("<=") {
            (Op::Le, 2)
        } else if rest.starts_with(">=") {
            (Op::Ge, 2)
        } else if rest.starts_with('<') {
            (Op::Lt, 1)
        } else if rest.starts_with('>') {
            (Op::Gt, 1)
        } else {
            return Err(self.unexpected(self.pos, format!("expected {OPERATORS}")));
        };
        self.pos += len;
        Ok(op)
    }

    fn operand(&mut self, op: Op) -> Result<Operand, CriteriaError> {
        let at = self.pos;
        let needs = |what: &str| format!("expected {what} after '{}'", op.as_str());
        if let Some(quoted) = self.rest().strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, escaped @ ('"' | '\\'))) => text.push(escaped),
                        _ => {
                            return Err(self.error(
                                at + 1 + i,
                                "only \\\" and \\\\ may follow a backslash".to_owned(),
                            ));
                        }
                    },
                    c => text.push(c),
                }
            }
            let Some(end) = end else {
                return Err(self.error(at, "quote is not closed".to_owned()));
            };
            if op.is_ordering() {
                return Err(self.unexpected(at, needs("a number")));
            }
            self.pos += 1 + end + 1;
            return Ok(Operand::Text(text));
        }
        let len = self
            .rest()
            .find(char::is_whitespace)
            .unwrap_or(self.rest().len());
        let word = &self.rest()[..len];
        if word.is_empty() || word.starts_with(['=', '!', '<', '>']) {
            return Err(self.unexpected(at, needs("a value")));
        }
        let operand = match parse_number(word) {
            Some(n) => Operand::Number(n),
            None if op.is_ordering() => return Err(self.unexpected(at, needs("a number"))),
            None => Operand::Text(word.to_owned()),
        };
        self.pos += len;
        Ok(operand)
    }
}

/// What makes a resource good for a package: any one of the criteria.
#[derive(Debug, Clone, PartialEq)]
pub struct Criteria {
    pub any: Vec<Criterion>,
}

impl Criteria {
    /// One expression, as in `up = "< 90"`.
    pub fn parse(expr: &str) -> Result<Self, CriteriaError> {
        Ok(Self {
            any: vec![Criterion::parse(expr)?],
        })
    }

    /// A list, as in `up = ["== up", "== degraded"]`: satisfied when any
    /// one is. An empty list is refused: nothing could ever be up.
    pub fn parse_any(exprs: &[String]) -> Result<Self, CriteriaError> {
        if exprs.is_empty() {
            return Err(CriteriaError::EmptyList);
        }
        let any = exprs
            .iter()
            .map(|e| Criterion::parse(e))
            .collect::<Result<_, _>>()?;
        Ok(Self { any })
    }

    pub fn is_satisfied_by(&self, value: Option<&Value>) -> bool {
        self.any.iter().any(|c| c.is_satisfied_by(value))
    }

    /// Judges a sample: `Some(true)` good, `Some(false)` bad, `None`
    /// unknown — the input [`Hysteresis::observe`] takes.
    pub fn judge(&self, value: Option<&Value>) -> Option<bool> {
        value.map(|v| self.is_satisfied_by(Some(v)))
    }
}

/// `== up`, the criterion of a `[[resource]]` without `up`.
impl Default for Criteria {
    fn default() -> Self {
        let up = Comparison {
            op: Op::Eq,
            operand: Operand::Text("up".to_owned()),
        };
        Self {
            any: vec![Criterion { all: vec![up] }],
        }
    }
}

impl fmt::Display for Criteria {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, criterion) in self.any.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{criterion}")?;
        }
        Ok(())
    }
}

/// The judged state of a resource for one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceState {
    /// The monitor could not tell, or no sample came for too long.
    Unknown,
    Up,
    Down,
    /// No sample since the host (or its monitor) started: neither starts
    /// nor halts a package (DESIGN §3). Becomes unknown when no sample comes
    /// in time ([`Tracker::expire_pending`]).
    Pending,
}

impl ResourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceState::Unknown => "unknown",
            ResourceState::Up => "up",
            ResourceState::Down => "down",
            ResourceState::Pending => "pending",
        }
    }

    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "unknown" => Some(ResourceState::Unknown),
            "up" => Some(ResourceState::Up),
            "down" => Some(ResourceState::Down),
            "pending" => Some(ResourceState::Pending),
            _ => None,
        }
    }

    pub fn is_up(self) -> bool {
        self == ResourceState::Up
    }
}

impl fmt::Display for ResourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, reported once when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    pub from: ResourceState,
    pub to: ResourceState,
}

impl StateChange {
    /// True when the change matters to placement: into or out of up.
    /// Moves between down and unknown are reported for display only.
    pub fn changes_up(&self) -> bool {
        self.from.is_up() != self.to.is_up()
    }
}

/// Rise/fall hysteresis over good, bad and unknown samples.
///
/// * The state starts `pending`: nothing is known yet. From pending, good
///   samples need `rise` in a row (as from any state) and bad ones `fall`
///   in a row (as when leaving up): a package re-adopted after a host
///   restart ran with this resource up a moment ago, and one bad sample
///   must not halt it when `fall` asks for more. An unknown sample makes it
///   `unknown` at once.
/// * Up needs `rise` good samples in a row, from any other state.
/// * Leaving up needs `fall` samples in a row that are not good — bad and
///   unknown alike, since unknown is never up. The state then becomes `down`
///   if the last of them was bad, `unknown` if it was unknown.
/// * When not up, the state follows the latest sample that is not good at
///   once (`down` for bad, `unknown` for unknown): nothing is at stake
///   between two not-up states, and a definite answer comes quickest.
///   In particular the first bad sample after start gives `down`
///   immediately, while the first good ones still need `rise`.
/// * A good sample while not up does not change the state until `rise` is
///   reached: a resource is never up on less evidence than `rise`.
///
/// `observe` returns the change exactly when the state changes, so each
/// transition is reported once. Counts of 0 are treated as 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    state: ResourceState,
    good_run: u32,
    not_good_run: u32,
}

impl Hysteresis {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state: ResourceState::Pending,
            good_run: 0,
            not_good_run: 0,
        }
    }

    pub fn state(&self) -> ResourceState {
        self.state
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Feeds one judged sample: `Some(true)` good, `Some(false)` bad,
    /// `None` unknown. Returns the change, if the state changed.
    pub fn observe(&mut self, sample_ok: Option<bool>) -> Option<StateChange> {
        let from = self.state;
        let to = match sample_ok {
            Some(true) => {
                self.not_good_run = 0;
                self.good_run = self.good_run.saturating_add(1);
                if self.good_run >= self.rise {
                    ResourceState::Up
                } else {
                    from
                }
            }
            not_good => {
                self.good_run = 0;
                self.not_good_run = self.not_good_run.saturating_add(1);
                let settled = match not_good {
                    Some(_) => ResourceState::Down,
                    None => ResourceState::Unknown,
                };
                let holds = matches!(
                    (from, not_good),
                    (ResourceState::Up, _) | (ResourceState::Pending, Some(_))
                );
                if holds && self.not_good_run < self.fall {
                    from
                } else {
                    settled
                }
            }
        };
        self.state = to;
        (from != to).then_some(StateChange { from, to })
    }

    /// Pending for too long: the resource is unknown. Returns the change,
    /// if the state was pending.
    pub fn expire(&mut self) -> Option<StateChange> {
        (self.state == ResourceState::Pending).then(|| {
            self.state = ResourceState::Unknown;
            StateChange {
                from: ResourceState::Pending,
                to: ResourceState::Unknown,
            }
        })
    }

    /// Changes rise and fall, keeping the state; counting starts over.
    fn reset_counts(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
        self.good_run = 0;
        self.not_good_run = 0;
    }
}

/// A package's view of a resource changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub package: String,
    pub resource: ResourceName,
    pub from: ResourceState,
    pub to: ResourceState,
    /// Why, for logs and `vigil why`: `95% does not meet < 90`.
    pub detail: String,
}

impl Transition {
    /// See [`StateChange::changes_up`].
    pub fn changes_up(&self) -> bool {
        self.from.is_up() != self.to.is_up()
    }
}

#[derive(Debug, Clone)]
struct Watch {
    criteria: Criteria,
    hysteresis: Hysteresis,
    /// When the current state began (the watch started, for pending), ms
    /// since the epoch on the host's clock.
    since_ms: u64,
}

/// How a package judges a resource now: state, criteria, the hysteresis
/// counts, and what the latest sample said (`90 does not meet < 80`).
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub state: ResourceState,
    pub criteria: String,
    pub rise: u32,
    pub fall: u32,
    /// Good samples in a row (toward `rise`).
    pub good_run: u32,
    /// Bad or unknown samples in a row (toward `fall`).
    pub not_good_run: u32,
    /// `None` when no sample arrived yet.
    pub detail: Option<String>,
}

/// Criteria and hysteresis for every (package, resource) pair, fed with
/// samples as they arrive. Samples of resources nobody watches cost one
/// hash lookup. The latest value of every resource seen is kept, so that a
/// pair added later (a package added on reload) is judged at once.
#[derive(Debug, Default)]
pub struct Tracker {
    /// resource → package → watch; BTreeMap for a stable transition order.
    by_resource: HashMap<ResourceName, BTreeMap<String, Watch>>,
    /// package → resources it watches, for per-package queries.
    by_package: HashMap<String, BTreeSet<ResourceName>>,
    latest: HashMap<ResourceName, Sample>,
}

fn detail(criteria: &Criteria, sample: &Sample) -> String {
    match &sample.value {
        None => match &sample.reason {
            Some(reason) => format!("unknown: {reason}"),
            None => "unknown".to_owned(),
        },
        Some(value) if criteria.is_satisfied_by(Some(value)) => format!("{value} meets {criteria}"),
        Some(value) => format!("{value} does not meet {criteria}"),
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts (or updates) judging `resource` for `package`.
    ///
    /// * A new pair starts `unknown` and, if the resource has been sampled
    ///   before, is judged against its latest sample right away.
    /// * The same pair again with the same settings changes nothing, so
    ///   applying an unchanged config on reload is harmless.
    /// * Changed criteria or counts keep the current state (a reload must
    ///   not make a running package's resources flap) but start counting
    ///   over, from the latest sample.
    ///
    /// Returns the transition the latest sample caused, if any.
    pub fn watch(
        &mut self,
        package: &str,
        resource: ResourceName,
        criteria: Criteria,
        rise: u32,
        fall: u32,
        now_ms: u64,
    ) -> Option<Transition> {
        let watches = self.by_resource.entry(resource.clone()).or_default();
        let watch = match watches.get_mut(package) {
            Some(watch) => {
                let same = watch.criteria == criteria
                    && watch.hysteresis.rise() == rise.max(1)
                    && watch.hysteresis.fall() == fall.max(1);
                if same {
                    return None;
                }
                watch.criteria = criteria;
                watch.hysteresis.reset_counts(rise, fall);
                watch
            }
            None => {
                self.by_package
                    .entry(package.to_owned())
                    .or_default()
                    .insert(resource.clone());
                let watch = Watch {
                    criteria,
                    hysteresis: Hysteresis::new(rise, fall),
                    since_ms: now_ms,
                };
                watches.entry(package.to_owned()).or_insert(watch)
            }
        };
        let sample = self.latest.get(&resource)?;
        let change = watch
            .hysteresis
            .observe(watch.criteria.judge(sample.value.as_ref()))?;
        watch.since_ms = now_ms;
        Some(Transition {
            package: package.to_owned(),
            resource,
            from: change.from,
            to: change.to,
            detail: detail(&watch.criteria, sample),
        })
    }

    /// Forgets what `package` concluded about `resource` so far: the state
    /// goes back to pending and only samples observed from now on count (a
    /// deferred `after_start` resource is judged afresh once the package has
    /// started). Returns the transition to pending, if the state changes.
    pub fn restart(
        &mut self,
        package: &str,
        resource: &ResourceName,
        now_ms: u64,
    ) -> Option<Transition> {
        let watch = self.by_resource.get_mut(resource)?.get_mut(package)?;
        let from = watch.hysteresis.state();
        watch.hysteresis = Hysteresis::new(watch.hysteresis.rise(), watch.hysteresis.fall());
        watch.since_ms = now_ms;
        (from != ResourceState::Pending).then(|| Transition {
            package: package.to_owned(),
            resource: resource.clone(),
            from,
            to: ResourceState::Pending,
            detail: "judged afresh after the package started".to_owned(),
        })
    }

    /// Turns every pair still pending after its deadline into unknown:
    /// `deadline_ms(resource)` is how long a resource may go without a first
    /// sample (DESIGN §3: twice its monitor's interval plus timeout).
    /// Returns the transitions, in resource and package order.
    pub fn expire_pending(
        &mut self,
        now_ms: u64,
        deadline_ms: impl Fn(&ResourceName) -> u64,
    ) -> Vec<Transition> {
        let mut expired = Vec::new();
        let mut resources: Vec<&ResourceName> = self.by_resource.keys().collect();
        resources.sort();
        let resources: Vec<ResourceName> = resources.into_iter().cloned().collect();
        for resource in resources {
            let limit = deadline_ms(&resource);
            let Some(watches) = self.by_resource.get_mut(&resource) else {
                continue;
            };
            for (package, watch) in watches.iter_mut() {
                if now_ms.saturating_sub(watch.since_ms) < limit {
                    continue;
                }
                if let Some(change) = watch.hysteresis.expire() {
                    watch.since_ms = now_ms;
                    expired.push(Transition {
                        package: package.clone(),
                        resource: resource.clone(),
                        from: change.from,
                        to: change.to,
                        detail: format!("no sample within {} ms", limit),
                    });
                }
            }
        }
        expired
    }

    /// Stops judging `resource` for `package`; false if it was not watched.
    pub fn unwatch(&mut self, package: &str, resource: &ResourceName) -> bool {
        let Some(watches) = self.by_resource.get_mut(resource) else {
            return false;
        };
        if watches.remove(package).is_none() {
            return false;
        }
        if watches.is_empty() {
            self.by_resource.remove(resource);
        }
        if let Some(resources) = self.by_package.get_mut(package) {
            resources.remove(resource);
            if resources.is_empty() {
                self.by_package.remove(package);
            }
        }
        true
    }

    /// Stops judging every resource of `package` (the package was removed).
    pub fn unwatch_package(&mut self, package: &str) {
        for resource in self.by_package.remove(package).unwrap_or_default() {
            if let Some(watches) = self.by_resource.get_mut(&resource) {
                watches.remove(package);
                if watches.is_empty() {
                    self.by_resource.remove(&resource);
                }
            }
        }
    }

    /// Judges `sample` for every package watching its resource and returns
    /// the transitions it caused, in package name order.
    pub fn observe(&mut self, sample: &Sample, now_ms: u64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        if let Some(watches) = self.by_resource.get_mut(&sample.name) {
            for (package, watch) in watches.iter_mut() {
                let judged = watch.criteria.judge(sample.value.as_ref());
                if let Some(change) = watch.hysteresis.observe(judged) {
                    watch.since_ms = now_ms;
                    transitions.push(Transition {
                        package: package.clone(),
                        resource: sample.name.clone(),
                        from: change.from,
                        to: change.to,
                        detail: detail(&watch.criteria, sample),
                    });
                }
            }
        }
        match self.latest.get_mut(&sample.name) {
            Some(latest) => latest.clone_from(sample),
            None => {
                self.latest.insert(sample.name.clone(), sample.clone());
            }
        }
        transitions
    }

    /// The state of `resource` for `package`, `None` if not watched.
    pub fn state(&self, package: &str, resource: &ResourceName) -> Option<ResourceState> {
        Some(
            self.by_resource
                .get(resource)?
                .get(package)?
                .hysteresis
                .state(),
        )
    }

    /// The state of `resource` for `package` and since when it holds (ms
    /// since the epoch), `None` if not watched.
    pub fn state_since(
        &self,
        package: &str,
        resource: &ResourceName,
    ) -> Option<(ResourceState, u64)> {
        let watch = self.by_resource.get(resource)?.get(package)?;
        Some((watch.hysteresis.state(), watch.since_ms))
    }

    /// Every resource `package` watches with its state, in name order.
    pub fn states(&self, package: &str) -> Vec<(ResourceName, ResourceState)> {
        let Some(resources) = self.by_package.get(package) else {
            return Vec::new();
        };
        resources
            .iter()
            .filter_map(|r| Some((r.clone(), self.state(package, r)?)))
            .collect()
    }

    /// How `package` judges `resource` now, for `vigil why`.
    pub fn judged(&self, package: &str, resource: &ResourceName) -> Option<Judged> {
        let watch = self.by_resource.get(resource)?.get(package)?;
        let h = &watch.hysteresis;
        Some(Judged {
            state: h.state(),
            criteria: watch.criteria.to_string(),
            rise: h.rise,
            fall: h.fall,
            good_run: h.good_run,
            not_good_run: h.not_good_run,
            detail: self
                .latest
                .get(resource)
                .map(|sample| detail(&watch.criteria, sample)),
        })
    }

    /// The criteria `package` applies to `resource`, for explanations.
    pub fn criteria(&self, package: &str, resource: &ResourceName) -> Option<&Criteria> {
        Some(&self.by_resource.get(resource)?.get(package)?.criteria)
    }

    /// Packages watching `resource`, in name order.
    pub fn watchers(&self, resource: &ResourceName) -> impl Iterator<Item = &str> {
        self.by_resource
            .get(resource)
            .into_iter()
            .flat_map(|w| w.keys().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn num(value: f64) -> Option<Value> {
        Some(Value::number(value, None))
    }

    fn pct(value: f64) -> Option<Value> {
        Some(Value::number(value, Some("%")))
    }

    fn text(value: &str) -> Option<Value> {
        Some(Value::text(value))
    }

    /// Each row: criteria (one string, or several joined by ` || ` to make a
    /// list), a value (`None` = unknown) and whether it satisfies them.
    fn check_table(table: &[(&str, Option<Value>, bool)]) {
        for (exprs, value, expected) in table {
            let list: Vec<String> = exprs.split(" || ").map(str::to_owned).collect();
            let criteria = Criteria::parse_any(&list).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                criteria.is_satisfied_by(value.as_ref()),
                *expected,
                "{exprs:?} against {value:?}"
            );
            // What Display prints reads back as the same criterion.
            for criterion in &criteria.any {
                let again = Criterion::parse(&criterion.to_string()).unwrap();
                assert_eq!(&again, criterion, "{criterion} reads back");
            }
        }
    }

    #[test]
    fn comparisons() {
        check_table(&[
            ("== up", text("up"), true),
            ("== up", text("Up"), false),
            ("== up", text("down"), false),
            ("== up", None, false),
            ("!= down", text("up"), true),
            ("!= down", text("down"), false),
            ("!= down", None, false),
            ("!= down", num(1.0), false),
            ("==up", text("up"), true),
            ("  ==   up  ", text("up"), true),
            ("< 90", num(89.9), true),
            ("< 90", num(90.0), false),
            ("< 90", pct(42.0), true),
            ("< 90", text("42"), false),
            ("< 90", None, false),
            ("<= 90.5", num(90.5), true),
            ("<= 90.5", num(90.6), false),
            ("> 5", num(5.0), false),
            (">= 5", num(5.0), true),
            ("> -1", num(-0.5), true),
            ("< 1e3", num(999.0), true),
            ("== 0", num(0.0), true),
            ("== 0", num(-0.0), true),
            ("== 0", text("0"), false),
            ("!= 0", text("n/a"), false),
            ("!= 0", num(1.0), true),
            ("!= 0", num(f64::NAN), false),
            ("> 5 and < 10", num(7.0), true),
            ("> 5 and < 10", num(5.0), false),
            ("> 5 and < 10", num(10.0), false),
            (">5 and<10", num(6.0), true),
            ("!= down and != degraded", text("up"), true),
            ("!= down and != degraded", text("degraded"), false),
            ("== \"with space\"", text("with space"), true),
            ("== \"42\"", text("42"), true),
            ("== \"42\"", num(42.0), false),
            ("== \"say \\\"hi\\\"\"", text("say \"hi\""), true),
            ("== \"\"", text(""), true),
            ("== inf", text("inf"), true),
            ("== up || == degraded", text("degraded"), true),
            ("== up || == degraded", text("down"), false),
            ("< 10 || > 90", num(50.0), false),
            ("< 10 || > 90", num(95.0), true),
            ("< 10 || > 90", None, false),
        ]);
    }

    #[test]
    fn default_is_equal_up() {
        let default = Criteria::default();
        assert_eq!(default, Criteria::parse("== up").unwrap());
        assert_eq!(default.to_string(), "== up");
        assert!(default.is_satisfied_by(text("up").as_ref()));
        assert!(!default.is_satisfied_by(text("yes").as_ref()));
    }

    fn check_error(expr: &str, expect: Expect) {
        let error = Criterion::parse(expr).expect_err(expr);
        expect.assert_eq(&error.to_string());
    }

    #[test]
    fn parse_errors() {
        check_error(
            "> 5 nd < 10",
            expect![[r#"in "> 5 nd < 10": expected 'and' at column 5, found "nd""#]],
        );
        check_error(
            "> 5 or < 10",
            expect![[
                r#"in "> 5 or < 10": expected 'and' (for 'or', give a list of criteria) at column 5, found "or""#
            ]],
        );
        check_error(
            "",
            expect![[
                r#"in "": expected an operator (==, !=, <, <=, >, >=) at column 1, found end of expression"#
            ]],
        );
        check_error(
            "up",
            expect![[
                r#"in "up": expected an operator (==, !=, <, <=, >, >=) at column 1, found "up""#
            ]],
        );
        check_error(
            "= up",
            expect![[
                r#"in "= up": expected an operator (==, !=, <, <=, >, >=) at column 1, found "=""#
            ]],
        );
        check_error(
            "===",
            expect![[r#"in "===": expected a value after '==' at column 3, found "=""#]],
        );
        check_error(
            "== ",
            expect![[
                r#"in "== ": expected a value after '==' at column 4, found end of expression"#
            ]],
        );
        check_error(
            "< up",
            expect![[r#"in "< up": expected a number after '<' at column 3, found "up""#]],
        );
        check_error(
            ">= 90%",
            expect![[r#"in ">= 90%": expected a number after '>=' at column 4, found "90%""#]],
        );
        check_error(
            "< \"5\"",
            expect![[r#"in "< \"5\"": expected a number after '<' at column 3, found "\"5\"""#]],
        );
        check_error(
            "== \"open",
            expect![[r#"in "== \"open": quote is not closed at column 4"#]],
        );
        check_error(
            "== \"a\\nb\"",
            expect![[r#"in "== \"a\\nb\"": only \" and \\ may follow a backslash at column 6"#]],
        );
        check_error(
            "> 5 and",
            expect![[
                r#"in "> 5 and": expected an operator (==, !=, <, <=, >, >=) at column 8, found end of expression"#
            ]],
        );
        check_error(
            "> 5 and and < 3",
            expect![[
                r#"in "> 5 and and < 3": expected an operator (==, !=, <, <=, >, >=) at column 9, found "and""#
            ]],
        );
        check_error(
            "== up down",
            expect![[r#"in "== up down": expected 'and' at column 7, found "down""#]],
        );
        check_error(
            "== é and x",
            expect![[
                r#"in "== é and x": expected an operator (==, !=, <, <=, >, >=) at column 10, found "x""#
            ]],
        );
        assert_eq!(
            Criteria::parse_any(&[]).unwrap_err().to_string(),
            "empty list of criteria: the resource could never be up"
        );
        let list = ["== up".to_owned(), "< up".to_owned()];
        assert!(matches!(
            Criteria::parse_any(&list),
            Err(CriteriaError::Syntax { column: 3, .. })
        ));
    }

    /// Runs a hysteresis with `rise` and `fall` over `steps`: each step is a
    /// sample (`g` good, `b` bad, `u` unknown), `:`, the state expected after
    /// it, and `!` when that step must report a transition into it.
    fn check_hysteresis(rise: u32, fall: u32, steps: &str) {
        let mut h = Hysteresis::new(rise, fall);
        assert_eq!(h.state(), ResourceState::Pending);
        for (i, step) in steps.split_whitespace().enumerate() {
            let (sample, expected) = step.split_once(':').expect("step is sample:state");
            let (expected, transition) = match expected.strip_suffix('!') {
                Some(state) => (state, true),
                None => (expected, false),
            };
            let before = h.state();
            let ok = match sample {
                "g" => Some(true),
                "b" => Some(false),
                "u" => None,
                other => panic!("bad sample {other:?} in test"),
            };
            let change = h.observe(ok);
            let context = format!(
                "rise={rise} fall={fall} step {} ({step}) of {steps:?}",
                i + 1
            );
            assert_eq!(h.state().as_str(), expected, "{context}");
            match change {
                Some(change) => {
                    assert!(transition, "unexpected transition {change:?} at {context}");
                    assert_eq!((change.from, change.to), (before, h.state()), "{context}");
                }
                None => assert!(!transition, "missing transition at {context}"),
            }
        }
    }

    #[test]
    fn hysteresis_sequences() {
        // rise applies from the start; from pending, bad samples need fall.
        check_hysteresis(2, 3, "g:pending g:up!");
        check_hysteresis(2, 3, "b:pending b:pending b:down! g:down g:up!");
        check_hysteresis(1, 1, "g:up! b:down! g:up! u:unknown! g:up!");
        // fall consecutive not-good samples leave up; a good one resets.
        check_hysteresis(2, 3, "g:pending g:up! b:up b:up g:up b:up b:up b:down!");
        // Unknown counts as not good for leaving up, and never for rise.
        check_hysteresis(2, 3, "g:pending g:up! u:up u:up u:unknown!");
        check_hysteresis(2, 3, "g:pending g:up! u:up b:up u:unknown! g:unknown g:up!");
        check_hysteresis(2, 3, "g:pending g:up! b:up u:up b:down!");
        check_hysteresis(2, 2, "g:pending u:unknown! g:unknown g:up!");
        // Between down and unknown the state follows the latest sample.
        check_hysteresis(
            3,
            2,
            "u:unknown! b:down! u:unknown! b:down! g:down g:down g:up!",
        );
        // Staying up or down reports nothing.
        check_hysteresis(1, 2, "g:up! g:up g:up b:up g:up b:up b:down! b:down b:down");
        // Counts of zero act as one.
        check_hysteresis(0, 0, "g:up! b:down! g:up!");
    }

    /// A host restart must not halt a package it re-adopts: until samples
    /// decide, the resource is pending, and one bad sample is not enough
    /// when `fall` asks for more (DESIGN §8 invariant 7).
    #[test]
    fn pending_after_start_needs_fall_bad_samples_to_go_down() {
        check_hysteresis(1, 2, "b:pending b:down!");
        check_hysteresis(1, 2, "b:pending g:up!");
        check_hysteresis(1, 1, "b:down!");
        // A monitor that cannot tell makes it unknown at once.
        check_hysteresis(1, 3, "u:unknown!");
    }

    #[test]
    fn pending_expires_into_unknown_only_when_no_sample_came() {
        let mut h = Hysteresis::new(1, 1);
        let change = h.expire().expect("pending expires");
        assert_eq!(
            (change.from, change.to),
            (ResourceState::Pending, ResourceState::Unknown)
        );
        assert_eq!(h.expire(), None, "expires once");
        let mut h = Hysteresis::new(1, 1);
        h.observe(Some(true));
        assert_eq!(h.expire(), None, "a sampled resource never expires");
        assert_eq!(h.state(), ResourceState::Up);
    }

    #[test]
    fn tracker_expires_pending_pairs_after_their_deadline() {
        let eth0 = name("/net/interfaces/eth0/status");
        let used = name("/fs/data/used_percent");
        let mut tracker = Tracker::new();
        tracker.watch("db", eth0.clone(), Criteria::default(), 1, 1, 1_000);
        tracker.watch(
            "db",
            used.clone(),
            Criteria::parse("< 90").unwrap(),
            1,
            1,
            1_000,
        );
        tracker.observe(&Sample::up(eth0.clone()), 1_500);
        let deadline = |r: &ResourceName| {
            if r.as_str().starts_with("/fs") {
                4_000
            } else {
                1_000
            }
        };
        assert!(tracker.expire_pending(4_999, deadline).is_empty());
        let t = tracker.expire_pending(5_000, deadline);
        expect!["db /fs/data/used_percent pending->unknown (no sample within 4000 ms)"]
            .assert_eq(&render(&t));
        assert_eq!(
            tracker.state_since("db", &used),
            Some((ResourceState::Unknown, 5_000))
        );
        assert_eq!(
            tracker.state_since("db", &eth0),
            Some((ResourceState::Up, 1_500))
        );
        assert!(tracker.expire_pending(99_000, deadline).is_empty());
    }

    fn name(s: &str) -> ResourceName {
        ResourceName::new(s).unwrap()
    }

    fn render(transitions: &[Transition]) -> String {
        let lines: Vec<String> = transitions
            .iter()
            .map(|t| {
                format!(
                    "{} {} {}->{} ({})",
                    t.package, t.resource, t.from, t.to, t.detail
                )
            })
            .collect();
        lines.join("\n")
    }

    #[test]
    fn tracker_judges_every_package_watching_a_resource() {
        let eth0 = name("/net/interfaces/eth0/status");
        let used = name("/fs/data/used_percent");
        let mut tracker = Tracker::new();
        assert_eq!(
            tracker.watch("db", eth0.clone(), Criteria::default(), 1, 2, 0),
            None
        );
        let web = Criteria::parse_any(&["== up".into(), "== degraded".into()]).unwrap();
        assert_eq!(tracker.watch("web", eth0.clone(), web, 2, 1, 0), None);
        assert_eq!(
            tracker.watch(
                "db",
                used.clone(),
                Criteria::parse("< 90").unwrap(),
                1,
                1,
                0
            ),
            None
        );
        assert_eq!(tracker.state("db", &eth0), Some(ResourceState::Pending));
        assert_eq!(tracker.state("nobody", &eth0), None);

        let t = tracker.observe(&Sample::up(eth0.clone()), 0);
        expect!["db /net/interfaces/eth0/status pending->up (up meets == up)"]
            .assert_eq(&render(&t));
        let t = tracker.observe(&Sample::text(eth0.clone(), "degraded"), 0);
        expect![
            "web /net/interfaces/eth0/status pending->up (degraded meets == up or == degraded)"
        ]
        .assert_eq(&render(&t));
        let t = tracker.observe(&Sample::number(used.clone(), 95.0, Some("%")), 0);
        expect!["db /fs/data/used_percent pending->down (95% does not meet < 90)"]
            .assert_eq(&render(&t));
        let t = tracker.observe(&Sample::down(eth0.clone(), "carrier lost"), 0);
        expect![[r#"
            db /net/interfaces/eth0/status up->down (down does not meet == up)
            web /net/interfaces/eth0/status up->down (down does not meet == up or == degraded)"#]]
        .assert_eq(&render(&t));
        let t = tracker.observe(&Sample::unknown(eth0.clone(), "monitor timed out"), 0);
        expect![[r#"
            db /net/interfaces/eth0/status down->unknown (unknown: monitor timed out)
            web /net/interfaces/eth0/status down->unknown (unknown: monitor timed out)"#]]
        .assert_eq(&render(&t));
        // Nobody watches this one.
        assert!(
            tracker
                .observe(&Sample::up(name("/other/thing")), 0)
                .is_empty()
        );

        assert_eq!(
            tracker.states("db"),
            vec![
                (used.clone(), ResourceState::Down),
                (eth0.clone(), ResourceState::Unknown)
            ]
        );
        assert_eq!(tracker.watchers(&eth0).collect::<Vec<_>>(), ["db", "web"]);
    }

    #[test]
    fn tracker_watch_on_reload() {
        let used = name("/fs/data/used_percent");
        let mut tracker = Tracker::new();
        let below_90 = Criteria::parse("< 90").unwrap();
        tracker.watch("db", used.clone(), below_90.clone(), 1, 2, 0);
        tracker.observe(&Sample::number(used.clone(), 80.0, Some("%")), 0);
        assert_eq!(tracker.state("db", &used), Some(ResourceState::Up));

        // A package added later is judged against the latest sample at once.
        let added = tracker.watch("web", used.clone(), below_90.clone(), 1, 1, 0);
        expect!["web /fs/data/used_percent pending->up (80% meets < 90)"]
            .assert_eq(&render(added.as_slice()));

        // The same settings again change nothing, not even the counts.
        tracker.observe(&Sample::number(used.clone(), 95.0, Some("%")), 0);
        assert_eq!(tracker.state("db", &used), Some(ResourceState::Up));
        assert_eq!(
            tracker.watch("db", used.clone(), below_90.clone(), 1, 2, 0),
            None
        );
        let t = tracker.observe(&Sample::number(used.clone(), 96.0, Some("%")), 0);
        expect!["db /fs/data/used_percent up->down (96% does not meet < 90)"]
            .assert_eq(&render(&t));

        // New criteria keep the state and count again from the latest sample.
        let below_99 = Criteria::parse("< 99").unwrap();
        let changed = tracker.watch("db", used.clone(), below_99, 2, 2, 0);
        assert_eq!(changed, None);
        assert_eq!(tracker.state("db", &used), Some(ResourceState::Down));
        let t = tracker.observe(&Sample::number(used.clone(), 97.0, Some("%")), 0);
        expect!["db /fs/data/used_percent down->up (97% meets < 99)"].assert_eq(&render(&t));

        assert!(tracker.unwatch("web", &used));
        assert!(!tracker.unwatch("web", &used));
        assert_eq!(tracker.state("web", &used), None);
        tracker.unwatch_package("db");
        assert!(tracker.states("db").is_empty());
        assert_eq!(tracker.watchers(&used).count(), 0);
        assert!(
            tracker
                .observe(&Sample::number(used, 1.0, None), 0)
                .is_empty()
        );
    }
}
