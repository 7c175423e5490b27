//! An exhaustive breadth-first explorer: every reachable state once, safety properties on each,
//! then a liveness check over the whole graph.
//!
//! Liveness ("once failures stop, everything finishes") is checked as: from every reachable
//! state, a final state is reachable through failure-free transitions only, and every
//! failure-free or failure transition out of a final state lands in a final state again (final
//! states are absorbing). In a finite graph this is what a fair scheduler needs to finish with
//! certainty; a state from which no failure-free path leads to a final state (a deadlock, or a
//! cycle that never decides) is reported with the shortest trace that reaches it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

/// A property the explorer checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// Never one participant committed and another aborted.
    Agreement,
    /// A participant commits only once the log holds the commit decision.
    NoCommitWithoutLoggedDecision,
    /// Once the log records a participant's acknowledgement of the outcome, that participant
    /// holds nothing (its row is never `prepared` again).
    NothingHeldAfterAcknowledgement,
    /// A finished transaction's record agrees with every participant: committed in the log,
    /// aborted nowhere; aborted in the log, committed nowhere.
    LogAgreesWithParticipants,
    /// Once failures stop, every transaction reaches a final state at the coordinator and at
    /// every participant.
    EventuallyFinal,
    /// A final state is never left.
    FinalStaysFinal,
    /// The real machine refused an event the model fed it (a driver or model bug).
    MachineAcceptsEvents,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Agreement => "agreement",
            Self::NoCommitWithoutLoggedDecision => "no commit without a logged decision",
            Self::NothingHeldAfterAcknowledgement => "nothing held after an acknowledgement",
            Self::LogAgreesWithParticipants => "the log's outcome agrees with the participants",
            Self::EventuallyFinal => "once failures stop, every transaction becomes final",
            Self::FinalStaysFinal => "final states are absorbing",
            Self::MachineAcceptsEvents => "the machine accepts every event it is fed",
        })
    }
}

/// A transition system the explorer can check.
pub trait Model {
    /// A state; equal states are explored once.
    type State: Clone + Eq + Hash + fmt::Display;
    /// What a transition did, for traces.
    type Label: Copy + fmt::Display;

    /// The initial state.
    fn init(&self) -> Self::State;
    /// Appends every transition out of `s` (self-loops may be left out). An `Err` is a refused
    /// event, reported as [`Property::MachineAcceptsEvents`].
    fn successors(
        &self,
        s: &Self::State,
        out: &mut Vec<(Self::Label, Self::State)>,
    ) -> Result<(), String>;
    /// Whether this transition is a failure (crash, message loss): left out of the liveness check.
    fn is_failure(&self, label: &Self::Label) -> bool;
    /// The first safety property `s` violates, if any.
    fn violated(&self, s: &Self::State) -> Option<Property>;
    /// Whether `s` is final: everything finished and nothing left that could change it.
    fn is_final(&self, s: &Self::State) -> bool;
    /// The representative of the states equivalent to `s` (symmetry reduction); every
    /// property must give the same answer for equivalent states.
    fn canonical(&self, s: Self::State) -> Self::State {
        s
    }
}

/// What an exploration saw.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Distinct reachable states.
    pub states: usize,
    /// Transitions between distinct states (self-loops not counted).
    pub transitions: usize,
    /// The largest breadth-first depth: the longest shortest path from the initial state.
    pub max_depth: u32,
    /// Reachable final states.
    pub final_states: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} states, {} transitions, max depth {}, {} final states, {:.1} s",
            self.states,
            self.transitions,
            self.max_depth,
            self.final_states,
            self.elapsed.as_secs_f64()
        )
    }
}

/// A property that does not hold, with the shortest trace to the state that shows it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which property.
    pub property: Property,
    /// The initial state, then one line per transition with the state it led to.
    pub trace: Vec<String>,
    /// What was explored before the violation was found.
    pub stats: Stats,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "property violated: {} (after {})",
            self.property, self.stats
        )?;
        for (i, line) in self.trace.iter().enumerate() {
            writeln!(f, "  {i:>2}. {line}")?;
        }
        Ok(())
    }
}

/// Explores every state reachable from `model.init()`; checks the safety properties on each
/// and then liveness over the whole graph.
pub fn check<M: Model>(model: &M) -> Result<Stats, Box<Violation>> {
    Explorer::new(model).run()
}

/// Every state reachable from `model.init()`, without checking anything.
pub fn reachable<M: Model>(model: &M) -> Result<Vec<M::State>, String> {
    let mut seen: HashMap<M::State, (), BuildHasherDefault<Fx>> = HashMap::default();
    let init = model.canonical(model.init());
    let mut states = vec![init.clone()];
    seen.insert(init, ());
    let mut out = Vec::new();
    let mut i = 0;
    while i < states.len() {
        out.clear();
        model.successors(&states[i], &mut out)?;
        for (_, t) in out.drain(..) {
            let t = model.canonical(t);
            if seen.insert(t.clone(), ()).is_none() {
                states.push(t);
            }
        }
        i += 1;
    }
    Ok(states)
}

const NONE: u32 = u32::MAX;

struct Explorer<'m, M: Model> {
    model: &'m M,
    started: Instant,
    states: Vec<M::State>,
    index: HashMap<M::State, u32, BuildHasherDefault<Fx>>,
    /// The state each state was first reached from; `NONE` for the initial state.
    parent: Vec<u32>,
    depth: Vec<u32>,
    /// Failure-free successors of state i: `edges[edge_start[i]..edge_start[i + 1]]`.
    edge_start: Vec<u32>,
    edges: Vec<u32>,
    transitions: usize,
    final_states: usize,
}

impl<'m, M: Model> Explorer<'m, M> {
    fn new(model: &'m M) -> Self {
        Self {
            model,
            started: Instant::now(),
            states: Vec::new(),
            index: HashMap::default(),
            parent: Vec::new(),
            depth: Vec::new(),
            edge_start: Vec::new(),
            edges: Vec::new(),
            transitions: 0,
            final_states: 0,
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            states: self.states.len(),
            transitions: self.transitions,
            max_depth: self.depth.iter().copied().max().unwrap_or(0),
            final_states: self.final_states,
            elapsed: self.started.elapsed(),
        }
    }

    fn id(n: usize) -> u32 {
        u32::try_from(n).unwrap_or_else(|_| panic!("more than {} states", u32::MAX))
    }

    /// Adds `s` if new; returns its index and whether it was new.
    fn intern(&mut self, s: &M::State, parent: u32, depth: u32) -> (u32, bool) {
        if let Some(&i) = self.index.get(s) {
            return (i, false);
        }
        let i = Self::id(self.states.len());
        self.index.insert(s.clone(), i);
        self.states.push(s.clone());
        self.parent.push(parent);
        self.depth.push(depth);
        (i, true)
    }

    /// The shortest trace to state `at`. States are stored in canonical form, so the trace is
    /// replayed from the initial state, picking at each step the transition whose canonical
    /// target is the next stored state: the labels and states shown are concrete.
    fn violation(&self, property: Property, at: u32, extra: Option<String>) -> Box<Violation> {
        let mut path = Vec::new();
        let mut cur = at;
        while self.parent[cur as usize] != NONE {
            path.push(cur);
            cur = self.parent[cur as usize];
        }
        path.reverse();
        let mut concrete = self.model.init();
        let mut trace = vec![format!("initial: {concrete}")];
        let mut out = Vec::new();
        for s in path {
            out.clear();
            if self.model.successors(&concrete, &mut out).is_err() {
                break;
            }
            let target = &self.states[s as usize];
            let Some((label, next)) = out
                .drain(..)
                .find(|(_, t)| self.model.canonical(t.clone()) == *target)
            else {
                trace.push("(replay lost the trace)".to_owned());
                break;
            };
            trace.push(format!("{label}\n        => {next}"));
            concrete = next;
        }
        trace.extend(extra);
        Box::new(Violation {
            property,
            trace,
            stats: self.stats(),
        })
    }

    fn run(mut self) -> Result<Stats, Box<Violation>> {
        let init = self.model.canonical(self.model.init());
        let (root, _) = self.intern(&init, NONE, 0);
        if let Some(p) = self.model.violated(&init) {
            return Err(self.violation(p, root, None));
        }
        let mut queue = VecDeque::from([root]);
        let mut out = Vec::new();
        let mut next = 0u32;
        while let Some(i) = queue.pop_front() {
            // Breadth-first order is index order, so the edge lists line up with the indices.
            assert_eq!(i, next, "the queue runs in index order");
            next += 1;
            let s = self.states[i as usize].clone();
            let depth = self.depth[i as usize];
            let is_final = self.model.is_final(&s);
            if is_final {
                self.final_states += 1;
            }
            out.clear();
            if let Err(refused) = self.model.successors(&s, &mut out) {
                return Err(self.violation(
                    Property::MachineAcceptsEvents,
                    i,
                    Some(format!("refused: {refused}")),
                ));
            }
            self.edge_start.push(Self::id(self.edges.len()));
            for (label, t) in out.drain(..) {
                let t = self.model.canonical(t);
                if t == s {
                    continue;
                }
                self.transitions += 1;
                let (j, new) = self.intern(&t, i, depth + 1);
                if !self.model.is_failure(&label) {
                    self.edges.push(j);
                }
                if new {
                    if let Some(p) = self.model.violated(&t) {
                        return Err(self.violation(p, j, None));
                    }
                    queue.push_back(j);
                }
                if is_final && !self.model.is_final(&t) {
                    return Err(self.violation(
                        Property::FinalStaysFinal,
                        j,
                        Some(format!("left a final state by: {label}")),
                    ));
                }
            }
        }
        self.edge_start.push(Self::id(self.edges.len()));
        self.check_liveness()?;
        Ok(self.stats())
    }

    /// Every state reaches a final state through failure-free transitions: a backward
    /// breadth-first search from the final states over the reversed failure-free edges.
    fn check_liveness(&self) -> Result<(), Box<Violation>> {
        let n = self.states.len();
        let mut in_start = vec![0u32; n + 1];
        for &t in &self.edges {
            in_start[t as usize + 1] += 1;
        }
        for i in 0..n {
            in_start[i + 1] += in_start[i];
        }
        let mut fill = in_start.clone();
        let mut preds = vec![0u32; self.edges.len()];
        for s in 0..n {
            for &t in &self.edges[self.edge_start[s] as usize..self.edge_start[s + 1] as usize] {
                preds[fill[t as usize] as usize] = Self::id(s);
                fill[t as usize] += 1;
            }
        }
        let mut reaches = vec![false; n];
        let mut queue = VecDeque::new();
        for (i, s) in self.states.iter().enumerate() {
            if self.model.is_final(s) {
                reaches[i] = true;
                queue.push_back(i);
            }
        }
        while let Some(t) = queue.pop_front() {
            for &p in &preds[in_start[t] as usize..in_start[t + 1] as usize] {
                if !reaches[p as usize] {
                    reaches[p as usize] = true;
                    queue.push_back(p as usize);
                }
            }
        }
        // The first stuck state in breadth-first order has the shortest trace.
        if let Some(stuck) = reaches.iter().position(|r| !r) {
            let deadlock = self.edge_start[stuck] == self.edge_start[stuck + 1];
            let why = if deadlock {
                "no failure-free transition leaves this state (deadlock)".to_owned()
            } else {
                "no sequence of failure-free transitions from this state reaches a final state"
                    .to_owned()
            };
            return Err(self.violation(Property::EventuallyFinal, Self::id(stuck), Some(why)));
        }
        Ok(())
    }
}

/// A small fast hasher (the rustc "Fx" hash): states are hashed millions of times and
/// SipHash's denial-of-service resistance buys nothing here.
#[derive(Default)]
pub struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
