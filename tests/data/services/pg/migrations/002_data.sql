INSERT INTO users VALUES (1, 'ada'), (2, 'grace');
