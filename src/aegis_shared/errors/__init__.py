"""Errors raised by aegis-shared; see :mod:`aegis_shared.errors.exceptions`."""
