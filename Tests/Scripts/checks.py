"""The check-and-report idiom the server check scripts share: `check` records a failed condition
without stopping, `finish` prints the failures (or the success line) and gives the exit status."""

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def finish(success):
    if failures:
        print(f"{len(failures)} check(s) failed:")
        for f in failures:
            print("  -", f)
        return 1
    print(success)
    return 0
