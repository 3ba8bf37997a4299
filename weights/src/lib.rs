//! `lethe-weights`: safetensors checkpoints read tensor by tensor.
//!
//! A memory-mapped checkpoint keeps every page of the file it touched mapped while a model
//! loads, so converting the real DeepSeek-OCR checkpoint (6.7 GB of bf16) to f32 weights (13.4 GB)
//! peaked at the sum of both. [`Checkpoint`] reads each tensor's bytes with a positioned read into
//! a buffer that is freed once the tensor is built (and converted), so loading costs the weights
//! kept plus one tensor.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use lethe_weights::Checkpoint;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("model.safetensors");
//! let w = Tensor::arange(0f32, 6., &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
//! candle_core::safetensors::save(&[("layer.weight".to_string(), w)].into_iter().collect(), &file).unwrap();
//!
//! let vb = Checkpoint::open(&[file]).unwrap().var_builder(DType::F32, &Device::Cpu);
//! let got = vb.pp("layer").get((2, 3), "weight").unwrap();
//! assert_eq!(got.to_vec2::<f32>().unwrap(), [[0., 1., 2.], [3., 4., 5.]]);
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// One or more safetensors files, indexed by tensor name; tensors are read on demand.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<(PathBuf, File)>,
    tensors: HashMap<String, Entry>,
    /// Whether a [`VarBuilder`] asking for f32 gets bf16 and f16 tensors as stored
    /// ([`Checkpoint::var_builder_keeping_half`]).
    keep_half: bool,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {msg}", path.display()))
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "BF16" => DType::BF16,
        "F16" => DType::F16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

impl Checkpoint {
    /// Reads the headers of `files` (the tensors themselves are read when asked for).
    ///
    /// # Errors
    /// A file that cannot be opened, a header that is not safetensors, a dtype candle has no type
    /// for, a tensor whose bytes lie outside its file, or a name in two files.
    pub fn open(files: &[PathBuf]) -> candle_core::Result<Self> {
        let mut out = Checkpoint {
            files: Vec::with_capacity(files.len()),
            tensors: HashMap::new(),
            keep_half: false,
        };
        for (index, path) in files.iter().enumerate() {
            let mut file = File::open(path).map_err(|e| err(path, e))?;
            let len = file.metadata().map_err(|e| err(path, e))?.len();
            let mut n = [0u8; 8];
            file.read_exact(&mut n)
                .map_err(|e| err(path, format!("no safetensors header: {e}")))?;
            let n = u64::from_le_bytes(n);
            if n > len.saturating_sub(8) || n > 100 << 20 {
                return Err(err(path, format!("header of {n} bytes in a file of {len}")));
            }
            let mut header = vec![0u8; n as usize];
            file.read_exact(&mut header).map_err(|e| err(path, e))?;
            let header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&header)
                    .map_err(|e| err(path, format!("unreadable safetensors header: {e}")))?;
            let data_start = 8 + n;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let dtype_name = info["dtype"].as_str().unwrap_or_default();
                let dtype = dtype_of(dtype_name).ok_or_else(|| {
                    err(
                        path,
                        format!("tensor {name} has dtype {dtype_name:?}, which is not read"),
                    )
                })?;
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(|d| d.as_u64())
                            .map(|d| d as usize)
                            .collect()
                    })
                    .unwrap_or_default();
                let offsets = info["data_offsets"].as_array();
                let (a, b) = match offsets.map(|o| (o.first(), o.get(1))) {
                    Some((Some(a), Some(b))) => (a.as_u64(), b.as_u64()),
                    _ => (None, None),
                };
                let (Some(a), Some(b)) = (a, b) else {
                    return Err(err(path, format!("tensor {name} has no data_offsets")));
                };
                let elems: usize = shape.iter().product();
                let (start, end) = (data_start + a, data_start + b);
                if b < a || end > len || (b - a) as usize != elems * dtype.size_in_bytes() {
                    return Err(err(
                        path,
                        format!("tensor {name}: bytes {a}..{b} do not hold {shape:?} {dtype_name}"),
                    ));
                }
                let entry = Entry {
                    file: index,
                    dtype,
                    shape,
                    start,
                    end,
                };
                if out.tensors.insert(name.clone(), entry).is_some() {
                    return Err(err(path, format!("tensor {name} is in two files")));
                }
            }
            out.files.push((path.clone(), file));
        }
        Ok(out)
    }

    /// The names of the tensors, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Reads one tensor onto `device`, converted to `dtype`.
    ///
    /// # Errors
    /// An unknown name, or a read that fails.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let (path, file) = &self.files[entry.file];
        let read = |dst: *mut u8, len: usize| {
            // SAFETY: `read_typed` hands over its vector's spare capacity, which nothing else
            // touches until the read returns.
            unsafe { read_into(file, entry.start, dst, len) }
                .map_err(|e| err(path, format!("reading tensor {name}: {e}")))
        };
        let shape = entry.shape.as_slice();
        // The bytes go straight into the tensor's own storage (safetensors is little-endian, as
        // is every target this builds for), so a tensor costs one buffer, not two.
        let tensor = match entry.dtype {
            // Widened here on every core: candle's `to_dtype` converts on one thread, and for a
            // bf16 checkpoint loaded as f32 that was a quarter of the load.
            DType::BF16 if dtype == DType::F32 => {
                let wide = widen(&read_typed::<half::bf16>(entry, read)?, half::bf16::to_f32);
                return Tensor::from_vec(wide, shape, device);
            }
            DType::F16 if dtype == DType::F32 => {
                let wide = widen(&read_typed::<half::f16>(entry, read)?, half::f16::to_f32);
                return Tensor::from_vec(wide, shape, device);
            }
            DType::BF16 => Tensor::from_vec(read_typed::<half::bf16>(entry, read)?, shape, device)?,
            DType::F16 => Tensor::from_vec(read_typed::<half::f16>(entry, read)?, shape, device)?,
            DType::F32 => Tensor::from_vec(read_typed::<f32>(entry, read)?, shape, device)?,
            other => {
                let bytes = read_typed::<u8>(entry, read)?;
                Tensor::from_raw_buffer(&bytes, other, shape, device)?
            }
        };
        if tensor.dtype() == dtype {
            Ok(tensor)
        } else {
            tensor.to_dtype(dtype)
        }
    }

    /// A `VarBuilder` over this checkpoint: each tensor is read when the model asks for it.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    /// A `VarBuilder` of dtype f32 over this checkpoint that gives bf16 and f16 tensors as they
    /// are stored, 16 bits a value, and converts every other tensor to f32: for loaders that
    /// keep 16-bit weights as they are (packing their bits), so that no f32 copy of a weight is
    /// ever made. Such a loader converts what it uses in f32 itself.
    pub fn var_builder_keeping_half(mut self, device: &Device) -> VarBuilder<'static> {
        self.keep_half = true;
        VarBuilder::from_backend(Box::new(self), DType::F32, device.clone())
    }

    /// The `VarBuilder` a model's loader takes: for f32 on the CPU, one keeping half
    /// ([`Checkpoint::var_builder_keeping_half`]: 16-bit weights packed from their bits);
    /// otherwise one converting every tensor to `dtype`.
    pub fn var_builder_for(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        if dtype == DType::F32 && device.is_cpu() {
            self.var_builder_keeping_half(device)
        } else {
            self.var_builder(dtype, device)
        }
    }

    /// The dtype `name` is given in when `dtype` is asked for: its stored 16-bit form when
    /// keeping half and f32 is asked for, else `dtype`.
    fn dtype_for(&self, name: &str, dtype: DType) -> DType {
        match self.tensors.get(name).map(|e| e.dtype) {
            Some(stored @ (DType::BF16 | DType::F16)) if self.keep_half && dtype == DType::F32 => {
                stored
            }
            _ => dtype,
        }
    }
}

/// A linear layer's `[out, in]` weight packed for `lethe-kernels` from the bits it was stored in,
/// when it is a contiguous CPU bf16 or f16 tensor (such as
/// [`Checkpoint::var_builder_keeping_half`] gives); `None` for any other tensor.
pub fn packed_from_bits(w: &Tensor) -> Option<lethe_kernels::PackedB> {
    let (out_dim, in_dim) = w.dims2().ok()?;
    with_half_bits(w, |dtype, bits| {
        let form = if dtype == DType::BF16 {
            lethe_kernels::Half::Bf16
        } else {
            lethe_kernels::Half::F16
        };
        lethe_kernels::PackedB::from_rows_half(bits, form, out_dim, in_dim)
    })
}

/// Calls `f` with the dtype and the bits of a contiguous CPU bf16 or f16 tensor, or returns
/// `None` for any other tensor.
fn with_half_bits<T>(t: &Tensor, f: impl FnOnce(DType, &[u16]) -> T) -> Option<T> {
    use candle_core::{CpuStorage, Storage};
    use half::slice::HalfFloatSliceExt;
    let (guard, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*guard {
        Storage::Cpu(CpuStorage::BF16(v)) => Some(f(DType::BF16, v[start..end].reinterpret_cast())),
        Storage::Cpu(CpuStorage::F16(v)) => Some(f(DType::F16, v[start..end].reinterpret_cast())),
        _ => None,
    }
}

/// `t` in f32: a CPU bf16 or f16 tensor widened on every core (candle's `to_dtype` uses one),
/// any other through `to_dtype`.
pub fn to_f32(t: &Tensor) -> candle_core::Result<Tensor> {
    let wide = with_half_bits(t, |dtype, bits| match dtype {
        DType::BF16 => widen(bits, |b| half::bf16::from_bits(b).to_f32()),
        _ => widen(bits, |b| half::f16::from_bits(b).to_f32()),
    });
    match wide {
        Some(values) => Tensor::from_vec(values, t.shape(), t.device()),
        None => t.to_dtype(DType::F32),
    }
}

/// `values` converted to f32 by `f`, in parallel chunks, into a vector that is not zeroed
/// first (glibc zeroes reused heap memory for `vec![0.0; n]` in one serial `memset`).
fn widen<T: Copy + Sync>(values: &[T], f: impl Fn(T) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(values.len());
    out.spare_capacity_mut()[..values.len()]
        .par_chunks_mut(1 << 16)
        .zip(values.par_chunks(1 << 16))
        .for_each(|(out, values)| {
            for (o, &v) in out.iter_mut().zip(values) {
                o.write(f(v));
            }
        });
    // SAFETY: the loop above wrote each of the first `values.len()` values.
    unsafe { out.set_len(values.len()) };
    out
}

/// A plain number type whose every bit pattern is a value (so bytes read from a file are one).
trait Plain: Copy + Default {}
impl Plain for half::bf16 {}
impl Plain for half::f16 {}
impl Plain for f32 {}
impl Plain for u8 {}

#[cfg(not(target_endian = "little"))]
compile_error!("lethe-weights reads little-endian safetensors into native numbers");

/// Reads a tensor's bytes into a vector of its element type: `read(dst, len)` fills the `len`
/// bytes at `dst`, the vector's spare capacity.
fn read_typed<T: Plain>(
    entry: &Entry,
    read: impl FnOnce(*mut u8, usize) -> candle_core::Result<()>,
) -> candle_core::Result<Vec<T>> {
    let bytes = (entry.end - entry.start) as usize;
    let n = bytes / std::mem::size_of::<T>();
    // `Checkpoint::open` checked that the range holds whole values of the stored dtype, and
    // `load` reads each dtype as its own type; a mismatch must not write past the vector.
    assert_eq!(
        n * std::mem::size_of::<T>(),
        bytes,
        "whole values in the tensor's bytes"
    );
    let mut values: Vec<T> = Vec::with_capacity(n);
    read(values.as_mut_ptr().cast::<u8>(), bytes)?;
    // SAFETY: the read filled all `bytes` bytes, `n` whole values (`Entry`'s range holds whole
    // values), and `T` is a plain number type (`Plain`) for which every bit pattern is valid.
    unsafe { values.set_len(n) };
    Ok(values)
}

/// The bytes a read hands each worker: large enough that a read is a few `pread` calls, small
/// enough that a 2 MB expert goes to one worker and a 300 MB table to all of them.
const READ_CHUNK: usize = 4 << 20;

/// Fills the `len` bytes at `dst` with the bytes of `file` from `offset`, in positioned reads of
/// [`READ_CHUNK`] run on every core. The memory is not zeroed first (on unix): a fresh buffer's pages are
/// first touched by the reads themselves, side by side (a first touch costs ~1 µs a KB on this
/// project's VMs, so a 300 MB table zeroed on one thread, then copied into on one thread, took
/// longer than packing it).
///
/// # Safety
/// `dst..dst + len` must be writable and not accessed by anything else until this returns.
unsafe fn read_into(file: &File, offset: u64, dst: *mut u8, len: usize) -> std::io::Result<()> {
    use rayon::prelude::*;
    let base = dst as usize;
    (0..len.div_ceil(READ_CHUNK))
        .into_par_iter()
        .try_for_each(|c| {
            let start = c * READ_CHUNK;
            let n = READ_CHUNK.min(len - start);
            // SAFETY: chunks are disjoint ranges of `dst..dst + len` (the caller's contract).
            unsafe { read_at(file, (base + start) as *mut u8, n, offset + start as u64) }
        })
}

/// Reads exactly `len` bytes at `offset` of `file` into `dst`, which need not be initialised.
///
/// # Safety
/// `dst..dst + len` must be writable and not accessed by anything else during the call.
#[cfg(unix)]
unsafe fn read_at(file: &File, dst: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < len {
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::other("offset past what pread takes"))?;
        // SAFETY: `dst + done..dst + len` is writable and ours alone (the caller's contract);
        // `pread` writes at most `len - done` bytes there.
        let got = unsafe { libc::pread(file.as_raw_fd(), dst.add(done).cast(), len - done, at) };
        match got {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => done += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(any(unix, windows)))]
compile_error!(
    "lethe-weights reads tensors with positioned reads, which it has for unix and Windows"
);

/// As the unix `read_at`, with Windows' positioned read into memory zeroed first.
///
/// # Safety
/// `dst..dst + len` must be writable and not accessed by anything else during the call.
#[cfg(windows)]
unsafe fn read_at(file: &File, dst: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    // SAFETY: writable and ours alone (the caller's contract); once zeroed, initialised bytes.
    let buf = unsafe {
        std::ptr::write_bytes(dst, 0, len);
        std::slice::from_raw_parts_mut(dst, len)
    };
    let mut done = 0;
    while done < len {
        match file.seek_read(&mut buf[done..], offset + done as u64)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => done += n,
        }
    }
    Ok(())
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, self.dtype_for(name, dtype), dev)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, self.dtype_for(name, dtype), dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path) -> PathBuf {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 24., &dev)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let b = (Tensor::arange(0f32, 10., &dev).unwrap() * 0.37).unwrap();
        let tensors: HashMap<String, Tensor> = [
            ("a.weight".to_string(), a),
            ("b.bias".to_string(), b.to_dtype(DType::BF16).unwrap()),
            ("c".to_string(), Tensor::new(&[7u32, 9], &dev).unwrap()),
            // Larger than one chunk of the parallel widening, with subnormals, zeros of both
            // signs and values beyond f16's range (infinite once stored in f16).
            (
                "d".to_string(),
                spread(70_001, &dev).to_dtype(DType::F16).unwrap(),
            ),
            (
                "e".to_string(),
                spread(70_001, &dev).to_dtype(DType::BF16).unwrap(),
            ),
            // Read in two whole chunks and a short one.
            ("f".to_string(), spread(2 * READ_CHUNK / 4 + 1_001, &dev)),
        ]
        .into_iter()
        .collect();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        path
    }

    /// `n` values from -1e5 to 1e5 on a cubic, so that most are small and some tiny.
    fn spread(n: usize, dev: &Device) -> Tensor {
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let x = 2.0 * i as f32 / (n - 1) as f32 - 1.0;
                1e5 * x * x * x
            })
            .collect();
        Tensor::from_vec(values, n, dev).unwrap()
    }

    #[test]
    fn reads_what_the_memory_mapped_loader_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path());
        let ours = Checkpoint::open(std::slice::from_ref(&path)).unwrap();
        // SAFETY: a file this test wrote and nobody changes.
        let mmap = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }.unwrap();
        for name in ["a.weight", "b.bias", "c", "d", "e", "f"] {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                if name == "c" && dtype != DType::F32 {
                    continue;
                }
                let want = mmap
                    .load(name, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let got = ours.load(name, dtype, &Device::Cpu).unwrap();
                assert_eq!(got.shape(), want.shape(), "{name}");
                assert_eq!(got.dtype(), dtype);
                let (g, w) = (
                    got.to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap(),
                    want.to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap(),
                );
                assert_eq!(g, w, "{name} as {dtype:?}");
            }
        }
        let vb = ours.var_builder(DType::F32, &Device::Cpu);
        assert!(vb.contains_tensor("a.weight"));
        assert!(
            vb.get((3, 2, 4), "a.weight").is_err(),
            "a wrong shape is refused"
        );
        assert!(vb.get(4, "missing").is_err());
    }

    #[test]
    fn keeping_half_gives_16_bit_tensors_as_stored_and_the_rest_in_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path());
        let plain = Checkpoint::open(std::slice::from_ref(&path))
            .unwrap()
            .var_builder(DType::F32, &Device::Cpu);
        let kept = Checkpoint::open(std::slice::from_ref(&path))
            .unwrap()
            .var_builder_keeping_half(&Device::Cpu);
        // What a model's loader gets: keeping half for f32 on the CPU, converting otherwise.
        let open = || Checkpoint::open(std::slice::from_ref(&path)).unwrap();
        let e = |vb: VarBuilder| vb.get(70_001, "e").unwrap().dtype();
        assert_eq!(
            e(open().var_builder_for(DType::F32, &Device::Cpu)),
            DType::BF16
        );
        assert_eq!(
            e(open().var_builder_for(DType::F16, &Device::Cpu)),
            DType::F16
        );
        // SAFETY: a file this test wrote and nobody changes.
        let mmap = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }.unwrap();
        for (name, shape, given) in [
            ("a.weight", vec![2, 3, 4], DType::F32),
            ("b.bias", vec![10], DType::BF16),
            ("c", vec![2], DType::F32),
            ("d", vec![70_001], DType::F16),
            ("e", vec![70_001], DType::BF16),
        ] {
            let got = kept.get(shape.as_slice(), name).unwrap();
            assert_eq!(got.dtype(), given, "{name}");
            let want = mmap.load(name, &Device::Cpu).unwrap();
            let bits = |t: &Tensor| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                bits(&got.flatten_all().unwrap()),
                bits(&want.flatten_all().unwrap()),
                "{name}"
            );
            // Asked for in another dtype, it converts as the plain builder does.
            let as_f16 = kept.get_unchecked_dtype(name, DType::F16);
            let plain_f16 = plain.get_unchecked_dtype(name, DType::F16);
            match (as_f16, plain_f16) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.dtype(), DType::F16);
                    assert_eq!(
                        bits(&a.flatten_all().unwrap()),
                        bits(&b.flatten_all().unwrap())
                    );
                }
                (a, b) => assert_eq!(a.is_err(), b.is_err(), "{name}"),
            }
            let f32s = plain.get(shape.as_slice(), name).unwrap();
            assert_eq!(f32s.dtype(), DType::F32);
            let widened = to_f32(&got).unwrap();
            assert_eq!(widened.dtype(), DType::F32);
            assert_eq!(
                bits(&widened.flatten_all().unwrap()),
                bits(&f32s.flatten_all().unwrap()),
                "{name}"
            );
            assert_eq!(
                with_half_bits(&got, |_, b| b.len()).is_some(),
                given != DType::F32
            );
            if given != DType::F32 {
                // Packed as a one-row weight: the stored values, widened.
                let row = got.flatten_all().unwrap().unsqueeze(0).unwrap();
                let packed = packed_from_bits(&row).unwrap();
                let values = Tensor::new(packed.to_rows(), &Device::Cpu).unwrap();
                assert_eq!(bits(&values), bits(&f32s.flatten_all().unwrap()), "{name}");
            } else {
                assert!(
                    packed_from_bits(&f32s.flatten_all().unwrap().unsqueeze(0).unwrap()).is_none()
                );
            }
        }
    }

    #[test]
    fn a_damaged_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let e = Checkpoint::open(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("do not hold"),
            "{e}"
        );
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let e = Checkpoint::open(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.safetensors"), "{e}");
    }

    #[test]
    fn a_file_cut_short_after_opening_names_the_tensor_it_could_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path());
        let checkpoint = Checkpoint::open(std::slice::from_ref(&path)).unwrap();
        let f = &checkpoint.tensors["f"];
        // Cut inside f's last chunk, and inside its first.
        for cut in [f.end - 5, f.start + 100] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let e = checkpoint
                .load("f", DType::F32, &Device::Cpu)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("model.safetensors") && e.contains("reading tensor f"),
                "{e}"
            );
        }
    }
}
