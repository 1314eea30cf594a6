"""The calculator: exact results, clear refusals, and refusals that are fast whatever the input."""

from __future__ import annotations

import time

import pytest
from inline_snapshot import snapshot
from pydantic_ai import ModelRetry

from tandem.tools.calculator import MAX_EXPRESSION_CHARS, calculate, calculator_toolset, plugin


def outcome(expression: str) -> str:
    """The tool's answer, or `retry: <message>` when it asks the model to fix its input."""
    try:
        return calculate(expression)
    except ModelRetry as exc:
        return f'retry: {exc.message}'


def timed_outcome(expression: str, runs: int = 3) -> tuple[str, float]:
    """The outcome, and the fastest of `runs` timings: work that grows with the input shows in every run,
    a pause of the shared machine (another process, a collection) only in one."""
    outcomes: list[str] = []
    timings: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        outcomes.append(outcome(expression))
        timings.append(time.perf_counter() - started)
    return outcomes[-1], min(timings)


def test_integers_and_fractions_are_exact() -> None:
    expressions = [
        '2**100',
        '1/3*3',
        '(1/3 + 1/6) * 2',
        '1/3',
        '-1/4',
        '2**-2',
        '(2/3)**-2',
        '10 // 3',
        '-7 // 2',
        '7 % 3',
        '7/2 % 1',
        '1_000 * 3',
        '0x10 + 1',
        '+-+5',
        '2**3**2',
        '(17 * 23) / 4',
        'factorial(20) / factorial(18)',
        '2**100 + 1/3',
    ]
    assert {e: outcome(e) for e in expressions} == snapshot(
        {
            '2**100': '1267650600228229401496703205376',
            '1/3*3': '1',
            '(1/3 + 1/6) * 2': '1',
            '1/3': '0.333333333333 (exactly 1/3)',
            '-1/4': '-0.25 (exactly -1/4)',
            '2**-2': '0.25 (exactly 1/4)',
            '(2/3)**-2': '2.25 (exactly 9/4)',
            '10 // 3': '3',
            '-7 // 2': '-4',
            '7 % 3': '1',
            '7/2 % 1': '0.5 (exactly 1/2)',
            '1_000 * 3': '3000',
            '0x10 + 1': '17',
            '+-+5': '-5',
            '2**3**2': '512',
            '(17 * 23) / 4': '97.75 (exactly 391/4)',
            'factorial(20) / factorial(18)': '380',
            '2**100 + 1/3': '1.26765060023e+30 (exactly 3802951800684688204490109616129/3)',
        }
    )


def test_floats_stay_floats() -> None:
    expressions = [
        '0.1 + 0.2',
        '1.5 * 2',
        '7.5 // 2',
        '2**0.5',
        '1/3 + 0.5',
        '1.0001**20000',
        '1e300 * 1e8',
        '10**-400 + 0.0',
    ]
    assert {e: outcome(e) for e in expressions} == snapshot(
        {
            '0.1 + 0.2': '0.30000000000000004',
            '1.5 * 2': '3.0',
            '7.5 // 2': '3.0',
            '2**0.5': '1.4142135623730951',
            '1/3 + 0.5': '0.8333333333333333',
            '1.0001**20000': '7.388317279514934',
            '1e300 * 1e8': '1e+308',
            '10**-400 + 0.0': '0.0',
        }
    )


def test_functions_and_constants() -> None:
    expressions = [
        'abs(-7/2)',
        'round(2.567, 2)',
        'round(7/3, 3)',
        'round(5/2)',
        'min(3, 1/2, 0.7)',
        'max(1, 2, 3)',
        'sqrt(16)',
        'sqrt(1/4)',
        'sqrt(2)',
        'floor(-7/2)',
        'ceil(7/2)',
        'log(100, 10)',
        'log10(1000)',
        'log(10**5000)',
        'exp(1)',
        'sin(pi/2)',
        'cos(0)',
        'tan(0)',
        'factorial(5)',
        'factorial(5.0)',
        'pi',
        'e',
    ]
    assert {e: outcome(e) for e in expressions} == snapshot(
        {
            'abs(-7/2)': '3.5 (exactly 7/2)',
            'round(2.567, 2)': '2.57',
            'round(7/3, 3)': '2.333 (exactly 2333/1000)',
            'round(5/2)': '2',
            'min(3, 1/2, 0.7)': '0.5 (exactly 1/2)',
            'max(1, 2, 3)': '3',
            'sqrt(16)': '4',
            'sqrt(1/4)': '0.5 (exactly 1/2)',
            'sqrt(2)': '1.4142135623730951',
            'floor(-7/2)': '-4',
            'ceil(7/2)': '4',
            'log(100, 10)': '2.0',
            'log10(1000)': '3.0',
            'log(10**5000)': '11512.925464970229',
            'exp(1)': '2.718281828459045',
            'sin(pi/2)': '1.0',
            'cos(0)': '1.0',
            'tan(0)': '0.0',
            'factorial(5)': '120',
            'factorial(5.0)': '120',
            'pi': '3.141592653589793',
            'e': '2.718281828459045',
        }
    )


def test_big_results_are_summarised_not_dumped() -> None:
    assert outcome('10**10000') == snapshot('1e+10000 (an exact integer with 10001 digits, too long to show in full)')
    assert outcome('(1/3)**10000') == snapshot('6.12989172395e-4772 (rounded; the exact fraction is too long to show)')
    assert outcome('factorial(1000)').startswith('402387260077093773543702433923')
    assert len(outcome('factorial(1000)')) == 2568


def test_refusals_tell_the_model_what_to_do() -> None:
    expressions = [
        "__import__('os')",
        '().__class__',
        'x',
        'sqrt',
        '[1][0]',
        '[x for x in (1, 2)]',
        '(lambda: 1)()',
        'a.b()',
        '1,000',
        '2^10',
        '1 << 4',
        '~1',
        '1 < 2',
        '1 if 2 else 3',
        "'text'",
        'True + 1',
        '2j',
        'max(1, key=abs)',
        'sqrt(*[1])',
        'max()',
        'round(1, 10**9)',
        '',
        'x := 1',
        '2 +',
    ]
    assert {e: outcome(e) for e in expressions} == snapshot(
        {
            "__import__('os')": "retry: Unknown function '__import__'. Known functions: abs, round, min, max, sqrt, floor, ceil, log, log10, exp, sin, cos, tan, factorial.",
            '().__class__': 'retry: Attribute access (.__class__) is not allowed. Call the listed functions by their bare name, e.g. sqrt(2).',
            'x': "retry: Unknown name 'x'. The calculator has no variables: substitute the number. Known constants: pi, e. Known functions: abs, round, min, max, sqrt, floor, ceil, log, log10, exp, sin, cos, tan, factorial.",
            'sqrt': 'retry: sqrt is a function; call it with parentheses, e.g. sqrt(2).',
            '[1][0]': 'retry: Indexing with [...] is not supported.',
            '[x for x in (1, 2)]': 'retry: Comprehensions are not supported. Write the numbers out, e.g. max(1, 2, 3).',
            '(lambda: 1)()': 'retry: Only the listed functions can be called, by bare name, e.g. sqrt(2). Write one arithmetic expression using numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4.',
            'a.b()': 'retry: Attribute access (.b) is not allowed. Call the listed functions by their bare name, e.g. sqrt(2).',
            '1,000': 'retry: Tuples, lists, sets and dicts are not supported. Pass several numbers straight to min or max, e.g. max(1, 2, 3), and write numbers without thousands separators (1000, not 1,000).',
            '2^10': 'retry: ^ is not a power operator here; use ** for powers, e.g. 2**10.',
            '1 << 4': 'retry: The operator << is not supported. Supported operators: + - * / // % **.',
            '~1': 'retry: The bitwise operator ~ is not supported.',
            '1 < 2': 'retry: Comparisons and boolean logic are not supported; the calculator only computes numbers.',
            '1 if 2 else 3': 'retry: Conditional expressions (x if c else y) are not supported.',
            "'text'": 'retry: Strings are not supported. Write one arithmetic expression using numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4.',
            'True + 1': 'retry: True is not a number. Write one arithmetic expression using numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4.',
            '2j': 'retry: Complex numbers (like 2j) are not supported; only real numbers are.',
            'max(1, key=abs)': 'retry: Keyword arguments are not supported; call it as max(a, b, ...).',
            'sqrt(*[1])': 'retry: *-unpacking is not supported; call it as sqrt(x).',
            'max()': 'retry: max got 0 argument(s); call it as max(a, b, ...).',
            'round(1, 10**9)': 'retry: round needs a whole number of digits from -100 to 100.',
            '': 'retry: The expression is empty. Write one arithmetic expression using numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4.',
            'x := 1': 'retry: Could not parse the expression: invalid syntax at column 3. Write one arithmetic expression using numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4.',
            '2 +': 'retry: Could not parse the expression: invalid syntax. Write one arithmetic expression using numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4.',
        }
    )


def test_math_errors_are_clear() -> None:
    expressions = [
        '1/0',
        '5 // 0',
        '5 % 0.0',
        '0**-1',
        'sqrt(-1)',
        'log(0)',
        'log(8, 1)',
        '(-8)**(1/3)',
        'exp(1000)',
        '2.0**10000',
        '1e308 * 10',
        '1e999',
        '2**10000 * 1.5',
        'factorial(1001)',
        'factorial(-1)',
        'factorial(2.5)',
    ]
    assert {e: outcome(e) for e in expressions} == snapshot(
        {
            '1/0': 'retry: Division by zero: the right-hand side of / is 0.',
            '5 // 0': 'retry: Division by zero: the right-hand side of // is 0.',
            '5 % 0.0': 'retry: Division by zero: the right-hand side of % is 0.',
            '0**-1': 'retry: Division by zero: 0 raised to a negative power.',
            'sqrt(-1)': 'retry: sqrt of a negative number has no real result.',
            'log(0)': 'retry: log is only defined for positive numbers.',
            'log(8, 1)': 'retry: The base of log must be positive and not 1.',
            '(-8)**(1/3)': 'retry: A negative number raised to a fractional power has no real result.',
            'exp(1000)': 'retry: exp: The result is too large for a float (over about 1.8e308).',
            '2.0**10000': 'retry: The result is too large for a float (over about 1.8e308).',
            '1e308 * 10': 'retry: The result is too large for a float (over about 1.8e308).',
            '1e999': 'retry: A number in the expression is too large for a float (over about 1.8e308).',
            '2**10000 * 1.5': 'retry: The result is too large for a float (over about 1.8e308).',
            'factorial(1001)': 'retry: factorial needs a whole number from 0 to 1000, got 1001.',
            'factorial(-1)': 'retry: factorial needs a whole number from 0 to 1000, got -1.',
            'factorial(2.5)': 'retry: factorial needs a whole number from 0 to 1000, got 2.5.',
        }
    )


@pytest.mark.parametrize(
    'expression',
    [
        pytest.param('9**9**9', id='tower'),
        pytest.param('2**50000', id='big-exponent'),
        pytest.param('7**9999 * 7**9999 * 7**9999 * 7**9999', id='growing-product'),
        pytest.param('*'.join(['factorial(1000)'] * 60), id='factorial-product'),
        pytest.param('+'.join(f'1/{n}**3000' for n in range(2, 60)), id='fraction-sum-work-budget'),
        pytest.param('-' * 900 + '1', id='deep-unary'),
        pytest.param('(-' * 150 + '1' + ')' * 150, id='deep-nesting'),
        pytest.param('(' * 300 + '1' + ')' * 300, id='parser-nesting-limit'),
        pytest.param('1' * 10_000, id='10kB'),
        pytest.param('1+' * 5_000 + '1', id='10kB-sum'),
    ],
)
def test_hostile_input_is_refused_fast(expression: str) -> None:
    outcome(expression)  # warm up: the first call pays for imports and caches, not for the input
    result, elapsed = timed_outcome(expression)
    assert result.startswith('retry: ')
    assert elapsed < 0.1


def test_oversized_input_is_refused_before_parsing() -> None:
    result, elapsed = timed_outcome('(' * 10_000)
    assert result == snapshot(
        'retry: The expression is 10000 characters long; the limit is 1000. Split the calculation into smaller steps.'
    )
    assert elapsed < 0.01
    assert outcome('1' * MAX_EXPRESSION_CHARS) == '1' * MAX_EXPRESSION_CHARS


def test_long_flat_sums_are_fine() -> None:
    # 400 left-nested additions: the evaluator loops over the left spine instead of recursing.
    assert outcome('+'.join(['1'] * 400)) == '400'


def test_toolset_exposes_one_side_effect_free_tool() -> None:
    toolset = calculator_toolset()
    assert list(toolset.tools) == ['calculate']
    assert toolset.tools['calculate'].metadata == {'side_effect': False}
    assert plugin.name == 'calc'
    assert plugin.build is calculator_toolset
