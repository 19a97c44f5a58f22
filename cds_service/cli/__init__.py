"""``voclosporin-cds``: run the service, play the EHR against any CDS service, check CDS Hooks JSON.

    voclosporin-cds serve      run the dev server, or gunicorn with the packaged settings
                               (--production)
    voclosporin-cds hook       build a spec-valid hook request for a patient on a FHIR server and
                               a proposed order, fill prefetch from the service's own discovery
                               templates (--prefetch) as an EHR does, send it, show the cards
    voclosporin-cds validate   check a request, response, discovery or feedback JSON file
    voclosporin-cds jwks       print the public JWK Set of a signing key (for CDS_JWT_ISSUERS)

Exit codes, so scripts and CI can tell failures apart:

    0  success (validate: no errors)
    1  the CDS service answered an HTTP error or a non-JSON body; validate found errors
    2  bad usage or an unreadable input file
    3  a server could not be reached, or the FHIR server refused what the command needs

Progress goes to stderr (``--quiet`` silences it); cards or JSON go to stdout.

The rooms:

    commands.py       the argparse parser, the cmd_* functions and main
    rendering.py      cards, violations and progress for a terminal
    ehr_client.py     FhirReader: the CLI playing the EHR against a FHIR server
    hook_requests.py  draft orders, the hook request, prefetch filled from templates
    service_calls.py  discovery, choosing the service, POSTing the hook
    signing.py        the client JWT and the public JWK Set
    exit_codes.py     the exit codes above
"""

from __future__ import annotations

from cds_service.cli.commands import main

__all__ = ["main"]
