"""A small labelled retrieval set: documents, and queries with the document that answers each.

Some queries share words with their answer (BM25's strength: identifiers, error codes, names);
others are paraphrases that share almost none (where embeddings help). Hybrid search should
find nearly all of them in its top five.
"""

from __future__ import annotations

DOCUMENTS: dict[str, str] = {
    'backups.md': '# Backups\n\nA snapshot of the database is taken every night and kept for thirty days. '
    'Restoring one takes about ten minutes.',
    'keys.md': '# API keys\n\nCreate a new key in the dashboard, deploy it, and revoke the old one within a day.',
    'vacation.md': '# Time off\n\nEmployees get twenty-five days of paid leave per year; '
    'unused days carry over until March.',
    'expenses.md': '# Expenses\n\nSubmit receipts within thirty days. Meals during business travel are '
    'reimbursed up to 40 euros a day.',
    'onboarding.md': '# Onboarding\n\nOn the first day a new hire gets a laptop, a badge and a buddy '
    'who shows them around the office.',
    'err-e1042.md': '# Error E1042\n\nE1042 means the upload exceeded the 20 MB limit. Split the file or compress it.',
    'err-e2210.md': '# Error E2210\n\nE2210 is raised when the session token has expired; sign in again.',
    'parking.md': '# Parking\n\nThe garage under the building has forty spaces; reserve one in the facilities app.',
    'security.md': '# Security incidents\n\nIf you suspect your account was compromised, '
    'report it to the security team at once and change your password.',
    'coffee.md': '# Kitchen\n\nThe espresso machine on the third floor is descaled every Friday.',
    'printing.md': '# Printing\n\nPrinters are on every floor; badge in at the printer to release your job.',
    'wifi.md': '# Wireless network\n\nGuests use the network "acme-guest"; the password changes every Monday.',
    'pets.md': '# Pets\n\nDogs are welcome in the office on Fridays if they are house-trained.',
    'deploy.md': '# Deploying\n\nRun `make release` from the main branch; the pipeline deploys to production '
    'after the tests pass.',
    'oncall.md': '# On-call\n\nThe on-call engineer answers pages within fifteen minutes, around the clock, for one week.',
    'bikes.md': '# Cycling\n\nSecure bicycle racks are in the courtyard, next to the showers.',
    'library.md': '# Library\n\nBooks can be borrowed for four weeks from the shelf next to the reception.',
    'gym.md': '# Fitness\n\nStaff get a discounted membership at the gym across the street.',
}

QUERIES: list[tuple[str, str]] = [
    ('what does error E1042 mean', 'err-e1042.md'),
    ('E2210', 'err-e2210.md'),
    ('how many days of holiday do I get', 'vacation.md'),
    ('I think someone hacked my login, what should I do', 'security.md'),
    ('where can I leave my car', 'parking.md'),
    ('how do I ship code to prod', 'deploy.md'),
    ('can I bring my puppy to work', 'pets.md'),
    ('reimbursement limit for food on a work trip', 'expenses.md'),
    ('how long are database backups retained', 'backups.md'),
    ('what is the guest wifi password policy', 'wifi.md'),
    ('rotate the API key', 'keys.md'),
    ('who responds to alerts at night', 'oncall.md'),
]
