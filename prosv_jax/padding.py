"""Padded widths: every padded array is rounded up to a multiple, so few shapes get compiled."""


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n."""
  return -(-int(n) // int(multiple)) * int(multiple)
