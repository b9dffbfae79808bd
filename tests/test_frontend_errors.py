"""Bad programs: each gives one typed error (kind), at the right line and column, with a message that
says what is wrong. Mistakes inside prelude layers are reported at the user's call, with the layer's
line as a note."""
from pathlib import Path

import pytest

from axon.frontend import compile_source, load
from axon.frontend import elaborator
from axon.frontend.errors import AxonNameError, AxonTypeError, AxonValueError, ShapeError
from axon.ir import AxonError, IRDTypeError, IRShapeError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# (source, kind, line, column, a fragment of the message)
BAD = [
    ('fn f(x { }',
     'syntax', 1, 8, "unexpected '{', expected ')', ',', ':' o"),
    ('model M { h = }',
     'syntax', 1, 15, "unexpected '}', expected an expression"),
    ('model M {\n  input x: f32[3]\n  output y = (x + 1\n}',
     'syntax', 4, 1, "unexpected '}', expected ')'"),
    ('model M { x = 1 $ 2 }',
     'syntax', 1, 17, "unexpected character '$'"),
    ('fn f(x) { return x < 1 < 2 }',
     'syntax', 1, 24, "unexpected '<': comparisons do not chain"),
    ('model M {',
     'syntax', 1, 10, 'unexpected end of file, expected a name,'),
    ('hello',
     'syntax', 1, 1, "unexpected name 'hello', expected a defi"),
    ('model M { input x f32[3] }',
     'syntax', 1, 19, "unexpected name 'f32', expected ':'"),
    ('fn f(x) { return x[1:2:3:4] }',
     'syntax', 1, 25, "unexpected ':', expected ',' or ']'"),
    ('model M { output y = 1.5.2 }',
     'syntax', 1, 25, "unexpected character '.'"),
    ('import "unterminated',
     'syntax', 1, 8, 'unexpected character \'"\''),
    ('model M {\n  input x: f32[b, 8]\n  h = lineer(x, 4)\n  output y = h\n}',
     'name', 3, 7, "unknown function 'lineer'"),
    ('model M {\n  input x: f32[b, 8]\n  output y = relu(z)\n}',
     'name', 3, 19, "unknown name 'z'"),
    ('model M {\n  input x: f32[b, 8]\n  output y = relu(xx)\n}',
     'name', 3, 19, "unknown name 'xx'"),
    ('model M {\n  input x: f32[b, 8]\n  param w: f32[8, 8] = kaiming_normal(8)\n  output y = x @ w\n}',
     'name', 3, 24, "unknown initializer 'kaiming_normal'"),
    ('fn f(x) { return x }\nfn f(y) { return y }\nmodel M { input x: f32[3]  output y = f(x) }',
     'name', 2, 1, "'f' is defined twice"),
    ('model M {\n  input x: f32[3]\n  output y = x\n  output y = x\n}',
     'name', 4, 3, "output 'y' is declared twice"),
    ('model M {\n  input x: f32[3]\n  input x: f32[4]\n  output y = x\n}',
     'name', 3, 3, "'x' is already defined"),
    ('model M { input x: f32[3]  output y = x }\n'
     'train MM { data = d()  loss = mse(y, t)  optim = sgd(lr = 0.1)  epochs = 1 }',
     'name', 2, 7, "train block for unknown model 'MM'"),
    ('model M { input x: f32[3]  output y = x }\n'
     'train M { data = d()  loss = mse(y, t)  optimiser = sgd(lr = 0.1)  epochs = 1 }',
     'name', 2, 41, "unknown train setting 'optimiser'"),
    ('model M { input x: f32[3]  output y = x }\n'
     'train M { data = d()  loss = mse(y, t)  optim = adan(lr = 0.1)  epochs = 1 }',
     'name', 2, 49, "unknown optimizer 'adan'"),
    ('model M { input x: f32[3]  output y = x }\n'
     'train M { data = d()  loss = msee(y, t)  optim = adam(lr = 0.1)  epochs = 1 }',
     'name', 2, 30, "unknown loss function 'msee'"),
    ('model M { input x: f32[3]  output y = x }\n'
     'train M { data = d()  loss = mse(x, t)  optim = adam(lr = 0.1)  epochs = 1 }',
     'name', 2, 30, "the loss uses no output of 'M'"),
    ('model M {\n  input x: f32[batch, 63]\n  h = linear(x, 4)\n  output y = h @ h\n}',
     'shape', 4, 14, "'matmul' inner dimensions differ: f32[ba"),
    ('fn f(x: f32[b, 64]) { return x }\nmodel M {\n  input x: f32[batch, 63]\n  output y = f(x)\n}',
     'shape', 4, 16, "argument 'x' of 'f': expected f32[batch,"),
    ('model M {\n  input x: f32[batch, 8]\n  input z: f32[batch, 9]\n  output y = x + z\n}',
     'shape', 4, 14, 'shapes [batch, 8] and [batch, 9] do not '),
    ('model M {\n  input x: f32[batch, 8]\n  output y = reshape(x, [batch, 3])\n}',
     'shape', 3, 14, 'cannot reshape f32[batch, 8] to [batch, '),
    ('model M {\n  input x: f32[4, 8]\n  output y = x[4]\n}',
     'shape', 3, 14, 'index 4 is out of range for axis 0 of si'),
    ('model M {\n  input x: f32[4, 8]\n  output y = x[0, 1, 2]\n}',
     'shape', 3, 14, 'too many indices (3) for a tensor of ran'),
    ('model M {\n  input x: f32[4, 8]\n  output y = x[:, 5:2]\n}',
     'shape', 3, 14, 'slice 5:2 of axis 1 (size 8) is empty'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = conv2d(x, 4, 9)\n}',
     'shape', 3, 14, "'conv2d' kernel 9x9 (dilation 1x1) does "),
    ('model M {\n  input x: f32[b, 8]\n  output y = layernorm(x) @ linear(x, 3)\n}',
     'shape', 3, 14, "'matmul' inner dimensions differ: f32[b,"),
    ('model M {\n  input x: f32[b, 8]\n  h = attention(x, 2)\n  output y = h\n}',
     'shape', 3, 17, "argument 'x' of 'attention': expected f3"),
    ('model M {\n  input x: f32[b, 8]\n  input t: f32[b, 7]\n  output l = mse(x, t)\n}',
     'shape', 4, 21, "argument 'target' of 'mse': expected f32[b, 8]"),
    ('model M {\n  input x: f32[b, 5]\n  input l: i64[b, 2]\n  output loss = cross_entropy(x, l)\n}',
     'shape', 4, 34, "argument 'labels' of 'cross_entropy': expected i64[b], got i64[b, 2]"),
    ('model M {\n  input x: f32[b, 5, 8]\n  h = lstm_cell(x, x, x)\n  output y = x\n}',
     'shape', 3, 17, "argument 'x' of 'lstm_cell': expected f3"),
    ('model M {\n  input x: f32[b, 6]\n  a = linear(x, 4) as s\n  c = linear(x, 5) as s\n  output y = c\n}',
     'shape', 4, 7, "parameter 's.w' is shared (the same 'as'"),
    ('model M {\n  input x: f32[b, 8]\n  output y = linear(x, 2.5)\n}',
     'type', 3, 24, "argument 'out' of 'linear' must be an in"),
    ('model M {\n  input x: i64[b, 8]\n  output y = linear(x, 2)\n}',
     'type', 3, 21, "argument 'x' of 'linear': expected f32[."),
    ('model M {\n  input x: f33[b, 8]\n  output y = x\n}',
     'type', 2, 12, "unknown dtype 'f33'"),
    ('model M {\n  input x: f32[b, 8]\n  if x { h = x }\n  output y = x\n}',
     'type', 3, 6, "an 'if' condition must be a bool known a"),
    ('model M {\n  input x: f32[b, 8]\n  for i in 0..b { x = x }\n  output y = x\n}',
     'type', 3, 15, 'a loop bound must be a known int, got si'),
    ('model M {\n  input x: f32[b, 8]\n  param w: f32[b, 8] = zeros()\n  output y = x\n}',
     'type', 3, 16, "a parameter's sizes must be known intege"),
    ('model M {\n  input x: f32[b, 8]\n  output y = [x, x]\n}',
     'type', 3, 3, 'an output must be a tensor, got list of '),
    ('model M {\n  input x: f32[b, 8]\n  h, c = linear(x, 3)\n  output y = h\n}',
     'type', 3, 3, 'cannot unpack f32[b, 3] into 2 names'),
    ('model M {\n  input x: f32[b, 8]\n  output y = linear\n}',
     'type', 3, 14, "'linear' is a function; call it as linea"),
    ('model M {\n  input x: bool[b, 8]\n  output y = sum(x, axis = 1)\n}',
     'type', 3, 14, "'sum' of a bool tensor; cast it to a num"),
    ('model M { input x: f32[3]  output y = x }\n'
     'train M { data = d()  loss = mse(y, t)  optim = adam(lr = 0.1)  epochs = 2.5 }',
     'type', 2, 74, "'epochs' must be an int, got 2.5"),
    ('model M {\n  input x: f32[b, 8]\n  output y = linear(x)\n}',
     'arity', 3, 14, "'linear' is missing argument 'out'"),
    ('model M {\n  input x: f32[b, 8]\n  output y = linear(x, 3, true, 4)\n}',
     'arity', 3, 33, "'linear' takes 3 arguments (x, out, bias"),
    ('model M {\n  input x: f32[b, 8]\n  output y = linear(x, 4, bais = false)\n}',
     'arity', 3, 27, "'linear' has no parameter 'bais'"),
    ('model M {\n  input x: f32[b, 8]\n  output y = linear(x, out = 3, out = 4)\n}',
     'arity', 3, 33, "argument 'out' of 'linear' is given twic"),
    ('model M {\n  input x: f32[b, 8]\n  output y = relu(x, x)\n}',
     'arity', 3, 22, "'relu' takes 1 argument (x), got 2"),
    ('model M { input x: f32[3]  output y = x }\ntrain M { data = d()  loss = mse(y, t)  epochs = 3 }',
     'arity', 2, 1, "the train block for 'M' needs 'optim = ."),
    ('model M { input x: f32[3]  output y = x }\n'
     'train M { data = d()  loss = mse(y, t)  optim = adam(rate = 0.1)  epochs = 3 }',
     'arity', 2, 49, "'adam' has no option 'rate'"),
    ('model M {\n  input x: f32[b, 8]\n  output y = dropout(x, p = 1.5)\n}',
     'value', 3, 14, 'dropout probability must be in [0, 1)'),
    ('model M {\n  input x: f32[b, 8]\n  n = 2 ** 100\n  output y = x\n}',
     'value', 3, 7, '2 ** 100 does not fit in 64 bits'),
    ('model M {\n  input x: f32[b, 8]\n  n = 1 // 0\n  output y = x\n}',
     'value', 3, 7, 'division by zero in 1 // 0'),
    ('fn f(x) { return f(x) }\nmodel M {\n  input x: f32[b, 8]\n  output y = f(x)\n}',
     'value', 1, 18, "calls nested more than 64 deep (does 'f'"),
    ('model M {\n  input x: f32[b, 8]\n  output y = x[:, ::0]\n}',
     'value', 3, 14, 'slice step must be >= 1, got 0'),
    ('model M {\n  input x: f32[b, 8]\n  h = x\n}',
     'value', 1, 1, "model 'M' has no output"),
    ('model M { input x: f32[3]  output y = x }\n'
     'train M { data = d()  loss = mse(y, t)  optim = adam(lr = -1.0)  epochs = 3 }',
     'value', 2, 54, 'the learning rate must be a finite number > 0, got -1.0'),
    ('import "../outside.axon"\nmodel M { input x: f32[3]  output y = x }',
     'import', 1, 1, "import '../outside.axon' reaches outside"),
    ('import "missing.axon"\nmodel M { input x: f32[3]  output y = x }',
     'import', 1, 1, "cannot import 'missing.axon': no such fi"),
    ('import "notes.txt"\nmodel M { input x: f32[3]  output y = x }',
     'import', 1, 1, "can only import .axon files, not 'notes."),
    ('fn f(x) {\n  output y = x\n}\nmodel M { input x: f32[3]  output y = f(x) }',
     'syntax', 2, 3, "'output' belongs in a model"),
    ('fn f(x) {\n  input z: f32[3]\n  return x\n}\nmodel M { input x: f32[3]  output y = f(x) }',
     'syntax', 2, 3, "'input' belongs in a model"),
    ('model M {\n  input x: f32[3]\n  return x\n}',
     'syntax', 3, 3, "a model has outputs, not a return value"),
    ('model M {\n  input x: f32[3]\n  assert x, "no"\n  output y = x\n}',
     'type', 3, 10, "an assert needs a bool known at compile time"),
    ('fn f(x: f32[*a, *b]) { return x }\nmodel M {\n  input x: f32[3]\n  output y = f(x)\n}',
     'type', 4, 16, "a type may contain '...' only once"),
    ('model M {\n  input x: f32[3]\n  param w: f32[3] = normal(-1.0)\n  output y = x + w\n}',
     'value', 3, 21, "normal(std=-1.0, mean=0.0) is not a distribution"),
    ('model M {\n  input x: f32[3]\n  output y = x + "text"\n}',
     'type', 3, 14, "'+' of a tensor and string 'text'"),
    ('model M {\n  input x: f32[2, 3]\n  output y = reshape(x, [-1, -1])\n}',
     'shape', 3, 14, "only one dimension can be -1"),
    ('fn f(x) { x = x }\nmodel M {\n  input x: f32[3]\n  output y = f(x)\n}',
     'type', 4, 14, "'f' returns no value"),
    ('model M {\n  input x: f32[3]\n  output y = x[1.5]\n}',
     'type', 3, 14, "an index must be an int, got float 1.5"),
    ('model M {\n  input x: f32[3]\n  output y = MM(x)\n}\nmodel MM { input x: f32[3]  output y = x }',
     'type', 3, 14, "'MM' is a model; only functions can be called"),
    ('fn f(x) {\n  param w: f32[3] = ones()\n  param w: f32[3] = zeros()\n  return x * w\n}\n'
     'model M { input x: f32[3]  output y = f(x) }',
     'name', 3, 3, "parameter 'w' is declared twice in 'f'"),
]


# Found in review: crashes, unbounded work, sizes beyond i64, silent weight sharing, layers that did not
# check their arguments, messages that leaked internals, and unchecked train settings.
_TRAIN = 'model M { input x: f32[3]  output y = x }\ntrain M { data = d()  '
BAD += [
    (_TRAIN + 'loss = mse(y, t, u)  optim = sgd(lr = 0.1)  epochs = 1 }',
     'arity', 2, 40, "'mse' takes 2 arguments (pred, target), got 3"),
    (_TRAIN + 'loss = cross_entropy(y, foo = t)  optim = sgd(lr = 0.1)  epochs = 1 }',
     'arity', 2, 47, "'cross_entropy' has no parameter 'foo'"),
    (_TRAIN + 'loss = mse(y)  optim = sgd(lr = 0.1)  epochs = 1 }',
     'arity', 2, 30, "'mse' is missing argument 'target'"),
    ('model M {\n  output y = ' + '9' * 5000 + '\n}',
     'value', 2, 14, 'integer 999999999999... (5000 digits) does not fit in 64 bits'),
    ('model M {\n  output y = 9223372036854775808\n}',
     'value', 2, 14, 'integer 9223372036854775808 does not fit'),
    ('model M {\n  output y = 1e999999\n}',
     'value', 2, 14, 'the number 1e999999 is too large for a float'),
    ('model M {\n  input x: f32[3]\n  s = [1]\n  repeat 40 { s = s + s }\n  output y = x\n}',
     'value', 4, 19, 'joining lists of 524288 and 524288 values gives more than 1,000,000'),
    ('model M {\n  input x: f32[3]\n  s = []\n  repeat 100000 { s = s + [1] }\n  output y = x\n}',
     'value', 4, 23, 'the program builds more than 20,000,000 list elements'),
    ('model M {\n  input x: f32[b, 3]\n  s = b\n  repeat 10000 { s = s * b }\n  output y = x\n}',
     'value', 4, 22, 'is a product of 9 symbolic sizes; at most 8'),
    ('model M {\n  input x: f32[b, 3]\n  s = b * 9223372036854775807 * 2\n  output y = x\n}',
     'value', 3, 7, 'does not fit in 64 bits'),
    ('model M {\n  input x: f32[b, 16]\n  output y = linear(x, 100000000000)\n}',
     'value', 3, 14, "parameter 'y.w' would hold 1,600,000,000,000 elements (f32[16, 100000000000])"),
    ('model M {\n  input x: f32[4611686018427387904 * 2, 4]\n  output y = x\n}',
     'value', 2, 16, 'does not fit in 64 bits'),
    ('model M {\n  input x: f32[b, 4]\n  a = linear(x, 4)\n  c = linear(x, 4) as a\n  output y = a + c\n}',
     'name', 4, 20, "'as a' would merge this layer with an earlier one named 'a' implicitly"),
    ('model M {\n  input x: f32[b, 4]\n  c = linear(x, 4) as a\n  a = linear(x, 4)\n  output y = a + c\n}',
     'name', 4, 3, "this layer's parameters would be named 'a', which an earlier 'as a' names explicitly"),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = max_pool2d(x, 2, stride = -1)\n}',
     'value', 3, 14, 'pooling stride must be >= 1 (or 0 for the kernel size), got -1'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = avg_pool2d(x, 0)\n}',
     'value', 3, 14, 'pooling kernel size must be >= 1, got 0'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = max_pool2d(x, 2, padding = 2)\n}',
     'value', 3, 14, 'pooling padding 2 must be at most half the kernel size 2'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = conv2d(x, 6, 3, groups = 0)\n}',
     'value', 3, 14, 'conv2d groups must be >= 1, got 0'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = conv2d(x, 6, 3, stride = 0)\n}',
     'value', 3, 14, 'conv2d stride must be >= 1, got 0'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = conv2d(x, 6, [3, 0])\n}',
     'value', 3, 14, 'conv2d kernel size must be >= 1, got [3, 0]'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = conv2d(x, 6, 3, padding = -1)\n}',
     'value', 3, 14, 'conv2d padding must be >= 0, got -1'),
    ('model M {\n  input x: f32[b, 3, 8, 8]\n  output y = conv2d(x, 4, 3, groups = 2)\n}',
     'value', 3, 14, 'conv2d channels (3 in, 4 out) must divide by groups (2)'),
    ('model M {\n  input x: f32[b, 5, 8]\n  output y = attention(x, 0)\n}',
     'value', 3, 14, 'attention needs at least one head, got 0'),
    ('model M {\n  input x: f32[b, 5, 8]\n  output y = lstm(x, 0)\n}',
     'value', 3, 14, 'lstm hidden size must be >= 1, got 0'),
    ('model M {\n  input x: f32[b, 0, 8]\n  output y = gru(x, 4)\n}',
     'value', 3, 14, 'gru needs a sequence of at least one step'),
    ('model M {\n  input x: f32[b, 8]\n  output y = layernorm(x, eps = -1.0)\n}',
     'value', 3, 14, 'layernorm eps must be a small positive number, got -1.0'),
    ('model M {\n  input x: f32[b, 8]\n  output y = linear(x, 0)\n}',
     'value', 3, 14, 'linear output size must be >= 1, got 0'),
    ('model M {\n  input x: i64[b]\n  output y = embedding(x, 0, 4)\n}',
     'value', 3, 14, 'embedding vocabulary size must be >= 1, got 0'),
    ('model M {\n  input x: int\n  output y = x\n}',
     'type', 2, 12, "'int' is not a dtype; this needs a tensor type such as f32[...]"),
    ('fn f(x: f32[n], n) { return x }\nmodel M {\n  input x: f32[3]\n  output y = f(x, x)\n}',
     'shape', 4, 19, "argument 'n' of 'f' is f32[3], but the shapes of the other arguments make it 3"),
    (_TRAIN + 'loss = mse(y, t)  optim = adam(lr = 0.1, weight_decay = -5)  epochs = 1 }',
     'value', 2, 64, "'weight_decay' must be a finite number >= 0, got -5"),
    (_TRAIN + 'loss = mse(y, t)  optim = adam(lr = 0.1, betas = [0.9])  epochs = 1 }',
     'type', 2, 64, "'betas' must be a list of two numbers [beta1, beta2], got [0.9]"),
    (_TRAIN + 'loss = mse(y, t)  optim = adam(lr = 0.1, betas = [0.9, 1.0])  epochs = 1 }',
     'value', 2, 64, "'betas' must be two numbers in [0, 1), got [0.9, 1.0]"),
    (_TRAIN + 'loss = mse(y, t)  optim = sgd(lr = 0.1)  epochs = 9223372036854775807 }',
     'value', 2, 73, "'epochs' must be in [1, 2,147,483,647], got 9223372036854775807"),
    (_TRAIN + 'loss = mse(y, t)  optim = sgd(lr = 0.1)  epochs = 1  batch = 0 }',
     'value', 2, 84, "'batch' must be in [1, 2,147,483,647], got 0"),
    (_TRAIN + 'loss = mse(y, t)  optim = sgd(lr = 0.1, nesterov = 1)  epochs = 1 }',
     'type', 2, 63, "'nesterov' must be true or false, got 1"),
    ('fn f(x, x) { return x }\nmodel M { input x: f32[3]  output y = x }',
     'name', 1, 9, "parameter 'x' of 'f' is declared twice"),
    ('model M(a = 1,\n        a = 2) { input x: f32[3]  output y = x }',
     'name', 2, 9, "parameter 'a' of 'M' is declared twice"),
    ('fn never(x: f33[3]) { return x }\nmodel M { input x: f32[3]  output y = x }',
     'type', 1, 13, "unknown dtype 'f33'"),
    ('model M { input x: f32[3]  output y = running_update(x, x) }',
     'type', 1, 39, "'running_update' updates a parameter, got"),
    ('fn f(x: f32[3]) {\n param m: f32[3] = zeros()\n'
     ' return running_update(m, x + x) + running_update(m, x) }\n'
     'model M { input x: f32[3]  output y = f(x) }',
     'value', 3, 36, "the parameter 'y.m' is updated twice in one step"),
]

@pytest.mark.parametrize("src, kind, line, col, fragment", BAD)
def test_bad_program(src, kind, line, col, fragment):
    with pytest.raises(AxonError) as info:
        compile_source(src, "bad.axon", model="M" if "model M" in src else None)
    err = info.value
    assert (err.kind, err.span.line, err.span.col) == (kind, line, col), str(err)
    assert fragment in err.message
    text = str(err)
    assert text.startswith(f"bad.axon:{line}:{col}: error: ")
    assert "^" in text.splitlines()[2]  # the caret line under the source line


def test_there_are_at_least_forty_distinct_bad_programs():
    assert len({src for src, *_ in BAD}) >= 40
    assert {k for _, k, *_ in BAD} == {"syntax", "name", "shape", "type", "arity", "value", "import"}


def test_hint_names_the_closest_layer():
    with pytest.raises(AxonNameError) as info:
        compile_source("model M {\n  input x: f32[b, 8]\n  h = relu(lineer(x, 128))\n  output y = h\n}",
                       "m.axon")
    assert str(info.value) == (
        "m.axon:3:12: error: unknown function 'lineer'\n"
        "      h = relu(lineer(x, 128))\n"
        "               ^^^^^^\n"
        "hint: did you mean 'linear'?")


def test_argument_mismatch_shows_expected_and_actual_shapes():
    src = ("fn dense(x: f32[b, 64]) { return x }\n"
           "model M {\n  input x: f32[batch, 63]\n  output y = dense(x)\n}")
    with pytest.raises(ShapeError) as info:
        compile_source(src, "m.axon")
    assert "expected f32[batch, 64], got f32[batch, 63]" in info.value.message


def test_prelude_mistake_is_reported_at_the_users_call_with_the_layer_as_a_note():
    src = "model M {\n  input x: f32[b, 3, 8, 8]\n  output y = conv2d(x, 4, 9)\n}"
    with pytest.raises(ShapeError) as info:
        compile_source(src, "m.axon")
    err = info.value
    assert (err.span.file, err.span.line) == ("m.axon", 3)
    assert err.notes and err.notes[0].span.file.endswith("prelude.axon")
    assert "convolve" in err.notes[0].span.source_line
    assert err.__cause__ is not None  # the builder's IRTypeError, kept as the cause


def test_deeper_prelude_chain_names_every_layer():
    src = "model M {\n  input x: f32[b, 5, 6]\n  output y = transformer_block(x, 4)\n}"
    with pytest.raises(AxonError) as info:
        compile_source(src, "m.axon")
    err = info.value
    assert err.span.line == 3 and "divide by the number of heads" in err.message
    assert [n.message for n in err.notes] == ["inside 'transformer_block', here", "inside 'attention', here"]


def test_runaway_unroll_is_stopped(monkeypatch):
    monkeypatch.setattr(elaborator, "MAX_STEPS", 1000)
    src = "model M {\n  input x: f32[b, 8]\n  repeat 100000 { repeat 100000 { h = x } }\n  output y = x\n}"
    with pytest.raises(AxonValueError) as info:
        compile_source(src, "m.axon")
    assert info.value.span.line == 3


def test_the_node_cap_is_reported_where_the_nodes_are_made_not_at_the_next_call(monkeypatch):
    monkeypatch.setattr(elaborator, "MAX_NODES", 1000)

    def source(factors: int) -> str:  # line 3 makes `factors` nodes in one expression, no call
        return ("model M {\n  input x: f32[b, 8]\n  h = x" + " * 1.5" * factors
                + "\n  output y = lineer(h, 4)\n}")

    with pytest.raises(AxonValueError) as info:  # the cap is the first error: it names line 3
        compile_source(source(1200), "m.axon")
    assert "more than 1,000 graph nodes" in info.value.message
    assert (info.value.span.line, info.value.span.col) == (3, 7)
    with pytest.raises(AxonNameError) as info:   # under the cap: the unknown function is the error
        compile_source(source(400), "m.axon")
    assert "unknown function 'lineer'" in info.value.message and info.value.span.line == 4


def test_a_call_to_an_unknown_function_is_reported_before_the_step_cap(monkeypatch):
    monkeypatch.setattr(elaborator, "MAX_STEPS", 2)  # the two statements; the call is the third step
    src = "model M {\n  input x: f32[b, 8]\n  output y = {f}(x, 4)\n}"
    with pytest.raises(AxonNameError) as info:
        compile_source(src.replace("{f}", "lineer"), "m.axon")
    assert "unknown function 'lineer'" in info.value.message
    with pytest.raises(AxonValueError) as info:  # a call that runs: the cap, at that call
        compile_source(src.replace("{f}", "linear"), "m.axon")
    assert "more than 2 statements and calls" in info.value.message
    assert (info.value.span.line, info.value.span.col) == (3, 14)


def test_imports_are_read_and_confined(tmp_path):
    project = tmp_path / "project"
    (project / "layers").mkdir(parents=True)
    (project / "layers" / "dense.axon").write_text(
        'import "../util.axon"\nfn dense(x: f32[..., n], k: int) { return double(linear(x, k)) }\n')
    (project / "util.axon").write_text('import "layers/dense.axon"\nfn double(x) { return x * 2.0 }\n')
    main = project / "main.axon"
    main.write_text('import "layers/dense.axon"\n'
                    'model M {\n  input x: f32[b, 3]\n  output y = dense(x, 4)\n}\n')
    g = load(main)
    assert sorted(g.params) == ["y.linear.b", "y.linear.w"]
    (tmp_path / "secret.axon").write_text("fn s(x) { return x }\n")
    main.write_text('import "../secret.axon"\nmodel M { input x: f32[3]  output y = s(x) }\n')
    with pytest.raises(AxonError) as info:
        load(main)
    assert info.value.kind == "import" and "outside the project folder" in info.value.message


def test_error_in_an_imported_file_points_into_that_file(tmp_path):
    (tmp_path / "lib.axon").write_text("fn bad(x) {\n  return x @ x\n}\n")
    main = tmp_path / "main.axon"
    main.write_text('import "lib.axon"\nmodel M {\n  input x: f32[b, 3]\n  output y = bad(x)\n}\n')
    with pytest.raises(ShapeError) as info:
        load(main)
    err = info.value
    assert err.span.file.endswith("lib.axon") and err.span.line == 2
    assert err.notes[0].span.file.endswith("main.axon") and err.notes[0].span.line == 4


@pytest.mark.parametrize("model, loss, fragment", [
    ("output y = x", "mean(y)", "must call an Axon function"),
    ("output y = x", "untyped(y, t)", "cannot tell the type of the label 't'"),
    ("output y = x", "vector(y)", "the loss must be a scalar"),
    ("output y = x\noutput loss = x", "mse(y, t)", "already has an output named 'loss'"),
])
def test_bad_losses_in_training_graphs(model, loss, fragment):
    from axon.frontend import parse, training_graph

    src = (f"fn untyped(a, b) {{ return mean(a - b) }}\nfn vector(a: f32[...]) {{ return a }}\n"
           f"model M {{\n  input x: f32[b, 3]\n{model}\n}}\n"
           f"train M {{ data = d()  loss = {loss}  optim = sgd(lr = 0.1)  epochs = 1 }}")
    with pytest.raises(AxonError) as info:
        training_graph(parse(src, "t.axon"))
    assert fragment in info.value.message
    assert info.value.span.file == "t.axon"


def test_the_main_files_own_model_is_chosen_over_imported_ones(tmp_path):
    (tmp_path / "zoo.axon").write_text("model Other { input x: f32[2]  output y = x }\n")
    main = tmp_path / "main.axon"
    main.write_text('import "zoo.axon"\nmodel Mine { input x: f32[2]  output y = -x }\n')
    assert load(main).name == "Mine"
    assert load(main, model="Other").name == "Other"



def test_loss_arity_is_checked_when_compiling_for_training():
    from axon.frontend import parse, training_graph

    src = ("model M {\n  input x: f32[b, 3]\n  output logits = linear(x, 3)\n}\n"
           "train M {\n  data = d()\n  loss = mse(logits, label, other)\n  optim = sgd(lr = 0.1)\n"
           "  epochs = 1\n}")
    with pytest.raises(AxonError) as info:
        training_graph(parse(src, "ep.axon"))
    err = info.value
    assert (err.kind, err.span.line, err.span.col) == ("arity", 7, 29)
    assert "'mse' takes 2 arguments (pred, target), got 3" in err.message


def test_loss_labels_are_found_among_the_bound_arguments():
    from axon.frontend import parse, training_graph

    src = ("model M {\n  input x: f32[b, 3]\n  output logits = linear(x, 5)\n}\n"
           "train M { data = d()  loss = cross_entropy(labels = lab, logits = logits)  "
           "optim = sgd(lr = 0.1)  epochs = 1 }")
    graph, spec = training_graph(parse(src, "t.axon"))
    assert spec.loss.labels == ("lab",) and spec.loss.params == ("labels", "logits")
    assert str(graph.inputs["lab"].type) == "i64[b]"


def test_a_loss_argument_of_the_wrong_type_is_reported_as_the_call_would():
    from axon.frontend import parse, training_graph

    src = ("model M {\n  input x: f32[b, 3]\n  output logits = argmax(x)\n}\n"
           "train M { data = d()  loss = cross_entropy(logits, lab)  optim = sgd(lr = 0.1)  epochs = 1 }")
    with pytest.raises(AxonError) as info:
        training_graph(parse(src, "t.axon"))
    err = info.value
    assert (err.kind, err.span.line, err.span.col) == ("type", 5, 44)
    assert "argument 'logits' of 'cross_entropy': expected f32[*lead, classes], got i64[b]" in err.message


def test_a_constant_that_does_not_fit_its_dtype_is_a_type_error_not_a_shape_error():
    """The builder's error class, not the wording of its message, picks the kind: this message names
    no dtype word, so it used to be reported as kind 'shape'."""
    src = "model M {\n  input x: f32[3]\n  output y = full([2], 300, dtype = i8)\n}"
    with pytest.raises(AxonTypeError) as info:
        compile_source(src, "bad.axon")
    err = info.value
    assert (err.kind, err.span.line, err.span.col) == ("type", 3, 14)
    assert err.message == "constant 300 does not fit in i8"
    assert isinstance(err.__cause__, IRDTypeError)


def test_a_shape_mistake_found_by_the_builder_is_still_a_shape_error():
    src = "model M {\n  input x: f32[3, 4]\n  output y = x @ x\n}"
    with pytest.raises(ShapeError) as info:
        compile_source(src, "bad.axon")
    assert info.value.kind == "shape" and isinstance(info.value.__cause__, IRShapeError)
    assert "inner dimensions differ" in info.value.message


@pytest.mark.parametrize("comment", ["\f", "\u2028", "\r", "\x0b", "\x1c", "\x85"])
def test_the_source_line_under_the_caret_is_counted_by_newlines_only(comment):
    src = f"# a{comment}b\nmodel M {{\n  output y = z\n}}\n"
    with pytest.raises(AxonNameError) as info:
        compile_source(src, "m.axon")
    assert info.value.span.line == 3 and info.value.span.source_line == "  output y = z"


def test_crlf_line_endings_show_without_the_carriage_return():
    with pytest.raises(AxonNameError) as info:
        compile_source("model M {\r\n  output y = z\r\n}\r\n", "m.axon")
    assert info.value.span.source_line == "  output y = z"


@pytest.mark.parametrize("value, shown", [(2**63, "9223372036854775808"), (10**5000, "a 16610-bit integer")],
                         ids=["2**63", "10**5000"])
def test_an_integer_hyper_parameter_beyond_i64_is_refused_at_its_declaration(value, shown):
    src = "model M(h = 4) {\n  input x: f32[b, 16]\n  output y = linear(x, h)\n}"
    with pytest.raises(AxonValueError) as info:
        compile_source(src, "m.axon", hparams={"h": value})
    err = info.value
    assert (err.span.line, err.span.col) == (1, 9)
    assert f"hyper-parameter 'h' is set to {shown}, which does not fit in 64 bits" in err.message


def test_a_huge_parameter_is_reported_at_the_users_call_with_the_declaration_as_a_note():
    src = "model M {\n  input x: f32[b, 16]\n  output y = linear(x, 100000000000)\n}"
    with pytest.raises(AxonValueError) as info:
        compile_source(src, "m.axon")
    err = info.value
    assert (err.span.file, err.span.line) == ("m.axon", 3)
    assert f"at most {elaborator.MAX_PARAM_ELEMENTS:,} are allowed" in err.message
    assert err.notes[0].span.file.endswith("prelude.axon") and "param w" in err.notes[0].span.source_line


def test_a_prelude_layers_assert_is_a_note_under_the_users_call():
    src = "model M {\n  input x: f32[b, 3, 8, 8]\n  output y = max_pool2d(x, 2, stride = -1)\n}"
    with pytest.raises(AxonValueError) as info:
        compile_source(src, "m.axon")
    err = info.value
    assert err.span.line == 3 and "slice" not in err.message
    assert [n.message for n in err.notes] == ["inside 'max_pool2d', here", "inside '_pool', here"]
    assert "assert sh >= 1" in err.notes[-1].span.source_line


def test_assert_messages_show_variables_in_braces():
    src = ('fn f(x, k: int) {\n  assert k > 0, "k must be > 0, got {k} for {x}; {unknown} {}"\n'
           '  return x\n}\nmodel M {\n  input x: f32[b, 3]\n  output y = f(x, -2)\n}')
    with pytest.raises(AxonValueError) as info:
        compile_source(src, "m.axon")
    assert info.value.message == "k must be > 0, got -2 for f32[b, 3]; {unknown} {}"


def test_a_scalar_type_as_an_input_dtype_is_explained_without_suggesting_itself():
    with pytest.raises(AxonError) as info:
        compile_source("model M {\n  input x: int\n  output y = x\n}", "m.axon")
    assert info.value.hint == "for a single int write i64[]"


def test_explicit_names_still_share_and_implicit_names_still_number():
    src = ("model M {\n  input x: f32[b, 4]\n  a = linear(x, 4) as s\n  c = linear(a, 4) as s\n"
           "  h = linear(c, 4)\n  h = linear(h, 4)\n  output y = h\n}")
    assert sorted(compile_source(src, "m.axon").params) == ["h.b", "h.w", "h_1.b", "h_1.w", "s.b", "s.w"]


def test_a_scope_clash_inside_a_users_function_is_reported_there_with_the_caller():
    src = ("fn blk(x) {\n  a = linear(x, 4)\n  return linear(a, 4) as a\n}\n"
           "model M {\n  input x: f32[b, 4]\n  output y = blk(x)\n}")
    with pytest.raises(AxonNameError) as info:
        compile_source(src, "m.axon")
    err = info.value
    assert (err.span.line, err.span.col) == (3, 23)
    assert [n.span.line for n in err.notes] == [7, 2]
    assert "name both explicitly" in err.hint


def test_importing_a_fifo_or_a_directory_is_refused_without_reading(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.axon")
    (tmp_path / "dir.axon").mkdir()
    for name in ("pipe.axon", "dir.axon"):
        main = tmp_path / "main.axon"
        main.write_text(f'import "{name}"\nmodel M {{ input x: f32[3]  output y = x }}\n')
        with pytest.raises(AxonError) as info:
            load(main)
        assert info.value.kind == "import" and "is not a regular file" in info.value.message
        assert info.value.span.line == 1


def test_an_oversized_import_is_refused(tmp_path, monkeypatch):
    from axon.frontend import program

    monkeypatch.setattr(program, "MAX_SOURCE_BYTES", 100)
    (tmp_path / "big.axon").write_text("#" * 101)
    main = tmp_path / "main.axon"
    main.write_text('import "big.axon"\nmodel M { input x: f32[3]  output y = x }\n')
    with pytest.raises(AxonError) as info:
        load(main)
    assert info.value.kind == "import" and "is 101 bytes, more than the 100" in info.value.message


def test_hostile_list_programs_finish_quickly():
    import time

    start = time.perf_counter()
    src = ("model M {\n  input x: f32[3]\n  s = range(400000)\n  repeat 200000 { n = len(s + s) }\n"
           "  output y = x\n}")
    with pytest.raises(AxonValueError) as info:
        compile_source(src, "m.axon")
    assert "list elements" in info.value.message and info.value.span.line == 4
    assert time.perf_counter() - start < 20
