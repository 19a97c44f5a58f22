"""Name the process exit codes, so scripts and CI can tell failures apart.

``CliError`` (``cds_service.errors``) carries one of these; its default is ``EXIT_UNREACHABLE``.
"""

from __future__ import annotations

EXIT_OK = 0  # success (validate: no errors)
EXIT_HTTP_ERROR = 1  # the CDS service answered an HTTP error or a non-JSON body; validate errors
EXIT_USAGE = 2  # bad usage or an unreadable input file
EXIT_UNREACHABLE = 3  # a server could not be reached, or the FHIR server refused what is needed
