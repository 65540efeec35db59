//! Optional napi addon: the collectives of data parallelism over MPI (Open MPI through rsmpi), for
//! the TypeScript `MpiCommunicator`. Translation only. MPI is initialised with
//! `Threading::Serialized`: calls run on libuv worker threads, one collective at a time (the
//! trainer awaits each before the next). Built by `npm run build:mpi`; the default addon never
//! links MPI.

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Mutex;

/// The MPI environment; `finalize` drops it (MPI_Finalize).
static UNIVERSE: Mutex<Option<mpi::environment::Universe>> = Mutex::new(None);

fn world() -> Result<SimpleCommunicator> {
    match UNIVERSE.lock() {
        Ok(u) if u.is_some() => Ok(SimpleCommunicator::world()),
        _ => Err(Error::new(Status::GenericFailure, "MPI is not initialised (or already finalised)".to_string())),
    }
}

/// Initialises MPI once per process. Returns [rank, size].
#[napi]
pub fn mpi_init() -> Result<Vec<u32>> {
    let mut u = UNIVERSE.lock().map_err(|_| Error::from_reason("MPI state poisoned"))?;
    if u.is_none() {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::from_reason("MPI_Init failed or MPI was initialised before"))?;
        if threading < Threading::Serialized {
            return Err(Error::from_reason(format!("this MPI offers only {threading:?} threading; Serialized is needed")));
        }
        *u = Some(universe);
    }
    let w = SimpleCommunicator::world();
    Ok(vec![w.rank() as u32, w.size() as u32])
}

/// MPI_Finalize. Every rank must call it before exiting.
#[napi]
pub fn mpi_finalize() {
    if let Ok(mut u) = UNIVERSE.lock() {
        u.take();
    }
}

/// MPI_Abort on the world: stops every rank of the job at once (used when one rank fails).
#[napi]
pub fn mpi_abort(code: i32) -> Result<()> {
    world()?.abort(code)
}

pub struct AllReduce<T> {
    data: Vec<T>,
}

macro_rules! all_reduce_task {
    ($t:ty, $js:ty) => {
        impl Task for AllReduce<$t> {
            type Output = Vec<$t>;
            type JsValue = $js;
            fn compute(&mut self) -> Result<Vec<$t>> {
                let mut out = vec![0 as $t; self.data.len()];
                world()?.all_reduce_into(&self.data[..], &mut out[..], SystemOperation::sum());
                Ok(out)
            }
            fn resolve(&mut self, _env: Env, out: Vec<$t>) -> Result<$js> {
                Ok(<$js>::new(out))
            }
        }
    };
}
all_reduce_task!(f64, Float64Array);
all_reduce_task!(f32, Float32Array);

/// Elementwise sum over all ranks; resolves to a new array (the caller copies it back).
#[napi(ts_return_type = "Promise<Float64Array>")]
pub fn mpi_all_reduce_f64(data: Float64Array) -> AsyncTask<AllReduce<f64>> {
    AsyncTask::new(AllReduce { data: data.to_vec() })
}

#[napi(ts_return_type = "Promise<Float32Array>")]
pub fn mpi_all_reduce_f32(data: Float32Array) -> AsyncTask<AllReduce<f32>> {
    AsyncTask::new(AllReduce { data: data.to_vec() })
}

pub struct Broadcast {
    data: Vec<f32>,
    root: i32,
}

impl Task for Broadcast {
    type Output = Vec<f32>;
    type JsValue = Float32Array;
    fn compute(&mut self) -> Result<Vec<f32>> {
        world()?.process_at_rank(self.root).broadcast_into(&mut self.data[..]);
        Ok(std::mem::take(&mut self.data))
    }
    fn resolve(&mut self, _env: Env, out: Vec<f32>) -> Result<Float32Array> {
        Ok(Float32Array::new(out))
    }
}

/// Rank `root`'s array on every rank.
#[napi(ts_return_type = "Promise<Float32Array>")]
pub fn mpi_broadcast_f32(data: Float32Array, root: u32) -> AsyncTask<Broadcast> {
    AsyncTask::new(Broadcast { data: data.to_vec(), root: root as i32 })
}

pub struct Barrier;

impl Task for Barrier {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> Result<()> {
        world()?.barrier();
        Ok(())
    }
    fn resolve(&mut self, _env: Env, _out: ()) -> Result<()> {
        Ok(())
    }
}

#[napi(ts_return_type = "Promise<void>")]
pub fn mpi_barrier() -> AsyncTask<Barrier> {
    AsyncTask::new(Barrier)
}
