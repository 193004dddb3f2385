//! The `i8042` saved-state unit: the keyboard controller with its
//! keyboard and mouse, and System Control Port A (port 0x92), the other
//! source of the A20 gate and of a reset (on a PC both sit in the Super
//! I/O chip's keyboard-controller function).

use std::sync::Arc;

use parking_lot::Mutex;
use ssm::{Unit, UnitReader, UnitWriter};

use super::units::failed;
use crate::devices::{
    A20Line, DataTarget, I8042, I8042State, Keyboard, Mouse, PENDING_LIMIT, Port92, Queue, Source,
};

/// `i8042`: the keyboard controller (command byte, output port, output
/// buffer and the answers waiting for it, what the next data byte is for)
/// and its keyboard and mouse, then port 0x92's register (`u8`). Version 2
/// had no port 0x92 (it loads as 0, as after a reset); version 1 held the
/// command byte, a queue of answers and whether a command byte was
/// expected next.
pub(crate) struct I8042Unit {
    pub(crate) kbc: Arc<Mutex<I8042>>,
    pub(crate) port92: Arc<Mutex<Port92>>,
    /// The A20 line both drive, restored in one step.
    pub(crate) a20: Arc<A20Line>,
}

const I8042_VERSION: u32 = 3;

fn source_code(source: Source) -> u8 {
    match source {
        Source::Keyboard => 0,
        Source::Aux => 1,
    }
}

fn source_of(code: u8) -> ssm::Result<Source> {
    match code {
        0 => Ok(Source::Keyboard),
        1 => Ok(Source::Aux),
        _ => Err(failed(format!("i8042 byte source {code}"))),
    }
}

const DATA_TARGETS: [DataTarget; 6] = [
    DataTarget::Keyboard,
    DataTarget::CommandByte,
    DataTarget::OutputPort,
    DataTarget::KeyboardLoopback,
    DataTarget::AuxLoopback,
    DataTarget::Aux,
];

fn put_option(w: &mut UnitWriter<'_>, v: Option<u8>) -> ssm::Result<()> {
    w.put_bool(v.is_some())?;
    w.put_u8(v.unwrap_or(0))
}

fn get_option(r: &mut UnitReader<'_>) -> ssm::Result<Option<u8>> {
    let some = r.get_bool()?;
    let v = r.get_u8()?;
    Ok(some.then_some(v))
}

fn put_i8042(w: &mut UnitWriter<'_>, s: &I8042State) -> ssm::Result<()> {
    w.put_u8(s.command_byte)?;
    w.put_u8(s.output_port)?;
    w.put_bool(s.last_was_command)?;
    let target = DATA_TARGETS.iter().position(|&t| t == s.data_target);
    w.put_u8(target.unwrap_or(0) as u8)?;
    put_option(w, s.output.map(|(b, _)| b))?;
    w.put_u8(s.output.map_or(0, |(_, src)| source_code(src)))?;
    let pending: Vec<u8> = s
        .pending
        .iter()
        .flat_map(|&(b, src)| [b, source_code(src)])
        .collect();
    w.put_buf(&pending)?;
    let k = &s.keyboard;
    w.put_buf(&k.out.bytes())?;
    put_option(w, k.awaiting)?;
    w.put_u8(k.scan_set)?;
    w.put_u8(k.last)?;
    let m = &s.mouse;
    w.put_buf(&m.out.bytes())?;
    put_option(w, m.awaiting)?;
    for b in [m.rate, m.resolution, m.last] {
        w.put_u8(b)?;
    }
    for b in [m.scaling_2_1, m.remote, m.reporting, m.wrap] {
        w.put_bool(b)?;
    }
    Ok(())
}

/// The most bytes a PS/2 device's queue holds in a saved state.
const PS2_MAX_QUEUE: usize = 16;

fn get_i8042(r: &mut UnitReader<'_>) -> ssm::Result<I8042State> {
    let command_byte = r.get_u8()?;
    let output_port = r.get_u8()?;
    let last_was_command = r.get_bool()?;
    let target = r.get_u8()?;
    let data_target = *DATA_TARGETS
        .get(usize::from(target))
        .ok_or_else(|| failed(format!("i8042 data target {target}")))?;
    let output_byte = get_option(r)?;
    let output_source = source_of(r.get_u8()?)?;
    let pending = r
        .get_buf(2 * PENDING_LIMIT)?
        .chunks(2)
        .map(|pair| match *pair {
            [b, src] => Ok((b, source_of(src)?)),
            _ => Err(failed("i8042 pending bytes without their source")),
        })
        .collect::<ssm::Result<_>>()?;
    let keyboard = Keyboard {
        out: Queue::from_bytes(&r.get_buf(PS2_MAX_QUEUE)?),
        awaiting: get_option(r)?,
        scan_set: r.get_u8()?,
        last: r.get_u8()?,
    };
    if !(1..=3).contains(&keyboard.scan_set) {
        return Err(failed(format!(
            "keyboard scan code set {}",
            keyboard.scan_set
        )));
    }
    let out = Queue::from_bytes(&r.get_buf(PS2_MAX_QUEUE)?);
    let awaiting = get_option(r)?;
    let (rate, resolution, last) = (r.get_u8()?, r.get_u8()?, r.get_u8()?);
    let mouse = Mouse {
        out,
        awaiting,
        rate,
        resolution: resolution & 3,
        last,
        scaling_2_1: r.get_bool()?,
        remote: r.get_bool()?,
        reporting: r.get_bool()?,
        wrap: r.get_bool()?,
    };
    Ok(I8042State {
        command_byte,
        output_port,
        output: output_byte.map(|b| (b, output_source)),
        pending,
        data_target,
        last_was_command,
        keyboard,
        mouse,
    })
}

/// Version 1: the command byte, whether a command byte comes next, and the
/// controller's queued answers (the first in the output buffer).
fn get_i8042_v1(r: &mut UnitReader<'_>) -> ssm::Result<I8042State> {
    let command_byte = r.get_u8()?;
    let awaiting = r.get_bool()?;
    let mut pending: std::collections::VecDeque<(u8, Source)> = r
        .get_buf(PENDING_LIMIT)?
        .into_iter()
        .map(|b| (b, Source::Keyboard))
        .collect();
    Ok(I8042State {
        command_byte,
        output: pending.pop_front(),
        pending,
        data_target: if awaiting {
            DataTarget::CommandByte
        } else {
            DataTarget::Keyboard
        },
        ..I8042State::default()
    })
}

impl Unit for I8042Unit {
    fn name(&self) -> &str {
        "i8042"
    }

    fn version(&self) -> u32 {
        I8042_VERSION
    }

    fn oldest_loadable_version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        put_i8042(w, &self.kbc.lock().state())?;
        w.put_u8(self.port92.lock().value())
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, version: u32, _pass: u32) -> ssm::Result<()> {
        let (state, port92) = match version {
            1 => (get_i8042_v1(r)?, 0),
            2 => (get_i8042(r)?, 0),
            _ => (get_i8042(r)?, r.get_u8()?),
        };
        let kbc_a20 = state.a20();
        self.kbc.lock().set_state(state);
        let mut port = self.port92.lock();
        port.set_value(port92);
        self.a20.restore(kbc_a20, port.alt_a20());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(version: u32, write: impl FnOnce(&mut UnitWriter<'_>)) -> (I8042State, u8, bool) {
        let header = ssm::Header::for_this_host("test", 0);
        let mut w = ssm::StreamWriter::new(Vec::new(), &header).unwrap();
        let mut u = w.begin_unit("i8042", 0, version, ssm::PASS_FINAL).unwrap();
        write(&mut u);
        u.end().unwrap();
        let bytes = w.finish().unwrap();
        let kbc = Arc::new(Mutex::new(I8042::default()));
        let port92 = Arc::new(Mutex::new(Port92::default()));
        port92.lock().set_value(0x02);
        let a20 = A20Line::new(|_| {});
        let mut m = ssm::Manager::new();
        m.register(Box::new(I8042Unit {
            kbc: Arc::clone(&kbc),
            port92: Arc::clone(&port92),
            a20: Arc::clone(&a20),
        }))
        .unwrap();
        let reader = ssm::StreamReader::buffered(std::io::Cursor::new(bytes), true).unwrap();
        m.load(reader).unwrap();
        let value = port92.lock().value();
        (kbc.lock().state(), value, a20.is_open())
    }

    #[test]
    fn version_1_loads_into_the_output_buffer() {
        let (s, port92, _) = load(1, |u| {
            u.put_u8(0x47).unwrap();
            u.put_bool(true).unwrap();
            u.put_buf(&[0x55, 0xfa]).unwrap();
        });
        assert_eq!(port92, 0);
        assert_eq!(s.command_byte, 0x47);
        assert_eq!(s.output, Some((0x55, Source::Keyboard)));
        assert_eq!(Vec::from(s.pending), [(0xfa, Source::Keyboard)]);
        assert_eq!(s.data_target, DataTarget::CommandByte);
    }

    #[test]
    fn version_3_round_trips_every_field_and_port_92() {
        let mut state = I8042State {
            command_byte: 0x03,
            output_port: 0x01,
            output: Some((0xaa, Source::Aux)),
            data_target: DataTarget::AuxLoopback,
            last_was_command: true,
            ..I8042State::default()
        };
        state.pending.push_back((0x12, Source::Aux));
        state.pending.push_back((0x34, Source::Keyboard));
        state.keyboard = Keyboard {
            out: Queue::from_bytes(&[0xfa, 0xab]),
            awaiting: Some(0xed),
            scan_set: 3,
            last: 0xab,
        };
        state.mouse = Mouse {
            out: Queue::from_bytes(&[0x08]),
            awaiting: Some(0xf3),
            rate: 40,
            resolution: 1,
            scaling_2_1: true,
            remote: true,
            reporting: true,
            wrap: true,
            last: 0x08,
        };
        let loaded = load(I8042_VERSION, |u| {
            put_i8042(u, &state).unwrap();
            u.put_u8(0x03).unwrap();
        });
        // the controller's A20 bit is low, port 0x92's high: open
        assert_eq!(loaded, (state.clone(), 0x03, true));
        // version 2: no port 0x92, which loads as after a reset: closed
        let loaded = load(2, |u| put_i8042(u, &state).unwrap());
        assert_eq!(loaded, (state, 0, false));
    }
}
