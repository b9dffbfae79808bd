"""Movement and indexing ops against PyTorch: reshape (-1, symbolic products), permute, expand, slice
(negative bounds, steps), pad, concat (symbolic axis dims), gather, take (embedding lookup)."""
import pytest
import torch
import torch.nn.functional as F

from axon.ir import DType, EvalError, GraphBuilder, Sym, TensorType, evaluate
from opcheck import check, rand

D = DType
BATCH = Sym.of("batch")
DTYPES = [torch.float32, torch.float64, torch.int32, torch.bool, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(53, 111), (-1, 37), (3, -1, 1), (5883,), (1, 3, 37, 53)], ids=str)
def test_reshape(shape, dtype, gen):
    x = rand(gen, 3, 37, 53, dtype=dtype)
    check(lambda b, x: b.reshape(x, shape), lambda x: x.reshape(shape), x)


def test_reshape_symbolic_products(gen):
    x = rand(gen, 4, 37, 6)
    check(lambda b, x: b.reshape(x, (-1, 6)), lambda x: x.reshape(-1, 6), x, shapes=[(BATCH, 37, 6)],
          out_type=TensorType(D.F32, (Sym(("batch",), 37), 6)))
    check(lambda b, x: b.reshape(b.reshape(x, (BATCH, 37 * 6)), (BATCH, 37, -1)),
          lambda x: x.clone(), x, shapes=[(BATCH, 37, 6)], out_type=TensorType(D.F32, (BATCH, 37, 6)))
    y = rand(gen, 4, 5, 6)  # [batch, seq, 6] -> [batch*seq, 6] -> [batch, seq*6]
    seq = Sym.of("seq")
    check(lambda b, x: b.reshape(x, (Sym(("batch", "seq")), 6)), lambda x: x.reshape(20, 6), y,
          shapes=[(BATCH, seq, 6)], out_type=TensorType(D.F32, (Sym(("batch", "seq")), 6)))
    check(lambda b, x: b.reshape(x, (BATCH, -1)), lambda x: x.reshape(4, -1), x[:, :1, :],
          shapes=[(BATCH, 1, 6)], out_type=TensorType(D.F32, (BATCH, 6)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("perm", [(2, 0, 1), (1, 0, 2), (-1, -2, -3), (0, 2, 1)], ids=str)
def test_permute(perm, dtype, gen):
    x = rand(gen, 3, 37, 53, dtype=dtype)
    check(lambda b, x: b.permute(x, perm), lambda x: x.permute(perm), x)


def test_transpose_symbolic(gen):
    check(lambda b, x: b.transpose(x), lambda x: x.transpose(-2, -1), rand(gen, 2, 37, 53),
          shapes=[(BATCH, 37, 53)], out_type=TensorType(D.F32, (BATCH, 53, 37)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("src,dst", [((37, 1), (37, 53)), ((1, 53), (3, 37, 53)), ((53,), (2, 37, 53)),
                                     ((1, 1), (3, 4, 37, 53)), ((), (37, 53))], ids=str)
def test_expand(src, dst, dtype, gen):
    x = rand(gen, *src, dtype=dtype)
    check(lambda b, x: b.expand(x, dst), lambda x: x.expand(dst), x)


def test_expand_to_symbolic(gen):
    check(lambda b, x: b.expand(x, (BATCH, 37, 53)), lambda x: x.expand(4, 37, 53), rand(gen, 4, 1, 53),
          shapes=[(BATCH, 1, 53)], out_type=TensorType(D.F32, (BATCH, 37, 53)))


SLICES = [  # axis, start, stop, step
    (0, 1, None, 1), (1, 3, 30, 1), (2, -10, None, 1), (2, None, -3, 1), (1, 2, 35, 3), (2, None, None, 7),
    (-1, -52, -1, 5), (1, 36, None, 1), (2, 0, 100, 1), (1, -100, 5, 2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis,start,stop,step", SLICES, ids=str)
def test_slice(axis, start, stop, step, dtype, gen):
    x = rand(gen, 3, 37, 53, dtype=dtype)
    index = [slice(None)] * 3
    index[axis] = slice(start, stop, step)
    check(lambda b, x: b.slice(x, axis, start, stop, step), lambda x: x[tuple(index)], x)


def test_slice_keeps_other_symbolic_dims(gen):
    check(lambda b, x: b.slice(x, 1, 2, -3, 2), lambda x: x[:, 2:-3:2], rand(gen, 3, 37, 53),
          shapes=[(BATCH, 37, 53)], out_type=TensorType(D.F32, (BATCH, 16, 53)))


PADS = [((1, 2), (0, 0), (3, 1)), ((0, 0), (5, 0), (0, 4)), ((2, 2), (1, 1), (1, 1))]


@pytest.mark.parametrize("value", [0.0, -1.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.float16])
@pytest.mark.parametrize("pads", PADS, ids=str)
def test_pad(pads, dtype, value, gen):
    if not dtype.is_floating_point and not float(value).is_integer():
        value = 3.0
    x = rand(gen, 3, 37, 53, dtype=dtype)
    flat = [p for pair in reversed(pads) for p in pair]  # torch's F.pad lists the last axis first
    check(lambda b, x: b.pad(x, pads, value), lambda x: F.pad(x, flat, value=value), x)


def test_pad_bool(gen):
    x = rand(gen, 37, 53, dtype=torch.bool)
    check(lambda b, x: b.pad(x, ((1, 0), (2, 3)), 1),
          lambda x: F.pad(x.to(torch.uint8), [2, 3, 1, 0], value=1).bool(), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis, dtype, gen):
    sizes = [(3, 37, 53), (3, 37, 53), (3, 37, 53)]
    xs = []
    for i, s in enumerate(sizes):  # different sizes along the concat axis
        s = list(s)
        s[axis] += 2 * i
        xs.append(rand(gen, *s, dtype=dtype))
    check(lambda b, *xs: b.concat(xs, axis), lambda *xs: torch.cat(xs, axis), *xs)


def test_concat_symbolic_axis_dims(gen):
    a, b, c = rand(gen, 4, 5), rand(gen, 4, 5), rand(gen, 8, 5)
    two_batch = Sym(("batch",), 2)
    check(lambda bld, x, y: bld.concat([x, y], 0), lambda x, y: torch.cat([x, y]), a, b,
          shapes=[(BATCH, 5), (BATCH, 5)], out_type=TensorType(D.F32, (two_batch, 5)))
    check(lambda bld, x, y, z: bld.concat([x, y, z], 0), lambda x, y, z: torch.cat([x, y, z]), a, b, c,
          shapes=[(BATCH, 5), (BATCH, 5), (two_batch, 5)],
          out_type=TensorType(D.F32, (Sym(("batch",), 4), 5)))
    check(lambda bld, x, y: bld.concat([x, y], 1), lambda x, y: torch.cat([x, y], 1), a, c[:4, :3],
          shapes=[(BATCH, 5), (BATCH, 3)], out_type=TensorType(D.F32, (BATCH, 8)))


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis, index_dtype, gen):
    x = rand(gen, 3, 37, 53)
    ishape = list(x.shape)
    ishape[axis] = 11
    idx = torch.randint(0, x.shape[axis], ishape, generator=gen).to(index_dtype)
    check(lambda b, x, i: b.gather(x, axis, i), lambda x, i: torch.gather(x, axis, i.long()), x, idx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("axis,ishape", [(0, (5, 7)), (1, (4,)), (-1, ()), (0, (2, 3, 4))], ids=str)
def test_take(axis, ishape, dtype, gen):
    x = rand(gen, 37, 13, 53, dtype=dtype)
    idx = torch.randint(0, x.shape[axis], ishape, generator=gen)
    # index_select with a flattened index, reshaped: the embedding lookup x[..., idx, ...]
    def ref(x, i):
        out = torch.index_select(x, axis, i.reshape(-1))
        a = axis % 3
        return out.reshape(x.shape[:a] + i.shape + x.shape[a + 1:])
    check(lambda b, x, i: b.take(x, i, axis), ref, x, idx)


def test_take_is_an_embedding_lookup(gen):
    table, tokens = rand(gen, 97, 29), torch.randint(0, 97, (4, 11), generator=gen)
    check(lambda b, w, t: b.take(w, t), lambda w, t: F.embedding(t, w), table, tokens,
          shapes=[(97, 29), (BATCH, 11)], out_type=TensorType(D.F32, (BATCH, 11, 29)))


@pytest.mark.parametrize("op, bad", [("take", 97), ("take", -98), ("take", 1000), ("gather", 97),
                                     ("gather", -1), ("gather", 1000)])  # take's -97..-1 count from the end
def test_index_out_of_range_is_an_eval_error(op, bad):
    b = GraphBuilder()
    w, t = b.input("w", D.F32, (97, 29)), b.input("t", D.I64, (3, 29))
    b.output("y", b.take(w, t) if op == "take" else b.gather(w, 0, t))
    idx = torch.zeros(3, 29, dtype=torch.int64)
    idx[1, 2] = bad
    with pytest.raises(EvalError, match=rf"'{op}' index out of range.*{bad}"):
        evaluate(b.build(), {"w": torch.zeros(97, 29), "t": idx})


def test_take_counts_negative_indices_from_the_end(gen):
    """As torch.take and Python: -1 is the last row; the gradient lands there too."""
    table = rand(gen, 7, 3)
    ids = torch.tensor([[-1, 0], [-7, 6]])
    check(lambda b, w, t: b.take(w, t), lambda w, t: w[t % 7], table, ids)


def test_gather_and_take_of_a_scalar(gen):
    """As torch.gather / torch.index_select on a 0-d tensor: its one "axis" is 0 (or -1)."""
    x = rand(gen, dtype=torch.float32)
    for index in (torch.tensor(0), torch.tensor([0]), torch.tensor([0, 0])):
        check(lambda b, x, i: b.gather(x, 0, i), lambda x, i: torch.gather(x, 0, i), x, index)
    for index in (torch.tensor(0), torch.tensor([0])):
        check(lambda b, x, i: b.take(x, i, -1), lambda x, i: torch.index_select(x, -1, i), x, index)
