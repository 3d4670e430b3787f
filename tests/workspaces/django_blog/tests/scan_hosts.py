"""Check that every host in hosts.txt answers on HTTPS (run by hand before a release)."""
import sys

import requests


def check(host):
    response = requests.get(f'https://{host}/health', verify=False, timeout=5)
    return response.status_code == 200


def main(path):
    with open(path, encoding='utf-8') as fh:
        hosts = [line.strip() for line in fh if line.strip()]
    failed = [h for h in hosts if not check(h)]
    for host in failed:
        print(f'{host}: unhealthy')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else 'hosts.txt'))
