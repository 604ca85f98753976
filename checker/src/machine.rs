//! The state machine definition the instances under test run: its initial
//! state and its transitions (from, event) → to, with state and event
//! names interned to small numbers so the search compares integers.

use std::collections::HashMap;

/// A state of the machine, by index into its state names.
pub type StateId = u16;
/// An event of the machine, by index into its event names.
pub type EventId = u16;

#[derive(Clone, Debug)]
pub struct Machine {
    states: Vec<String>,
    events: Vec<String>,
    initial: StateId,
    transitions: HashMap<(StateId, EventId), StateId>,
}

impl Machine {
    /// A machine starting in `initial` with `transitions` given as
    /// `(from, event, to)`. States are every name that appears; a
    /// (from, event) pair given twice keeps the first target, as the
    /// server's first-matching-transition rule does for unguarded ones.
    pub fn new(initial: &str, transitions: &[(&str, &str, &str)]) -> Machine {
        let mut machine = Machine {
            states: Vec::new(),
            events: Vec::new(),
            initial: 0,
            transitions: HashMap::new(),
        };
        machine.initial = machine.intern_state(initial);
        for (from, event, to) in transitions {
            let from = machine.intern_state(from);
            let to = machine.intern_state(to);
            let event = intern(&mut machine.events, event);
            machine.transitions.entry((from, event)).or_insert(to);
        }
        machine
    }

    fn intern_state(&mut self, name: &str) -> StateId {
        intern(&mut self.states, name)
    }

    pub fn initial(&self) -> StateId {
        self.initial
    }

    pub fn state_id(&self, name: &str) -> Option<StateId> {
        position(&self.states, name)
    }

    pub fn event_id(&self, name: &str) -> Option<EventId> {
        position(&self.events, name)
    }

    pub fn state_name(&self, id: StateId) -> &str {
        &self.states[usize::from(id)]
    }

    /// Where `event` leads from `from`, if anywhere.
    pub fn target(&self, from: StateId, event: EventId) -> Option<StateId> {
        self.transitions.get(&(from, event)).copied()
    }

    /// Names of the events that leave `from` (for workload generators).
    pub fn events_from(&self, from: &str) -> Vec<&str> {
        let Some(from) = self.state_id(from) else {
            return Vec::new();
        };
        let mut out: Vec<&str> = self
            .transitions
            .keys()
            .filter(|(f, _)| *f == from)
            .map(|(_, e)| self.events[usize::from(*e)].as_str())
            .collect();
        out.sort_unstable();
        out
    }

    pub fn state_names(&self) -> &[String] {
        &self.states
    }

    pub fn event_names(&self) -> &[String] {
        &self.events
    }
}

fn position(names: &[String], name: &str) -> Option<u16> {
    names
        .iter()
        .position(|n| n == name)
        .and_then(|i| u16::try_from(i).ok())
}

fn intern(names: &mut Vec<String>, name: &str) -> u16 {
    if let Some(id) = position(names, name) {
        return id;
    }
    names.push(name.to_string());
    u16::try_from(names.len() - 1).expect("a machine has fewer than 65,536 names")
}
