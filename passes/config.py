"""Named limits of the clean-up passes, in one place (no magic numbers in the passes themselves)."""

# fold: the largest literal tensor (in elements) a folded value may become. Larger non-uniform results
# stay computed: a literal bloats the IR text and the generated source, a kernel recomputes it for free.
FOLD_MAX_ELEMENTS = 4096

# fold: the largest value (in elements) fold evaluates at compile time. Uniform values (a const filled
# to any shape) fold without evaluating the whole tensor; anything larger than this is left alone, so a
# `const` of shape [65536, 65536] never allocates 16 GiB inside the compiler.
FOLD_MAX_EVAL_ELEMENTS = 1 << 20
