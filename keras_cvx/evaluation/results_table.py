"""Plain-text results tables, as the examples and benchmarks print them.

``format_table(rows, columns)``: ``rows`` are dicts, ``columns`` are ``(key, header,
format_spec)`` triples (``format(row[key], format_spec)`` gives the cell). Columns are as wide as
their widest cell or header, separated by two spaces; numbers (int/float) are right-aligned,
everything else left-aligned.
"""

import numbers


def format_table(rows, columns):
    """The table as one string: a header line, then one line per row."""
    if not columns:
        raise ValueError(f"`columns` must hold at least one (key, header, format_spec), got {columns!r}.")
    headers = [header for _, header, _ in columns]
    cells = [[format(row[key], spec) for key, _, spec in columns] for row in rows]
    widths = [max([len(header)] + [len(line[i]) for line in cells]) for i, header in enumerate(headers)]
    right = [bool(rows) and isinstance(rows[0][key], numbers.Number) for key, _, _ in columns]

    def line(values):
        padded = [value.rjust(width) if r else value.ljust(width) for value, width, r in zip(values, widths, right)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers)] + [line(values) for values in cells])
